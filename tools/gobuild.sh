# shellcheck shell=bash
# Sourced by the Go build scripts (tools/controlplane, tools/node): `go build` with progress.
# The caller defines `log` (its prefix) and sets `step`/`steps` (which build of how many this is).
# shellcheck disable=SC2154  # step, steps: the caller's

minutes() { if [ "$1" -lt 90 ]; then echo "$1 s"; else echo "$((($1 + 30) / 60)) min"; fi; }
# build LABEL DIR OUTPUT LDFLAGS PACKAGE... — `go build -v` names each package as it
# compiles it; against the number the build needs (`go list -deps`) that is the progress.
build() {
    local label=$1 dir=$2 out=$3 ldflags=$4 total rc
    shift 4
    step=$((step + 1))
    log "[$step/$steps] $label: resolving modules (the first time this downloads them)"
    local modcache ticker errs
    modcache=$(go env GOMODCACHE)
    errs=$(mktemp)
    (while sleep 20; do log "[$step/$steps] $label: still downloading modules ($(du -sm "$modcache" 2>/dev/null | cut -f1) MB in the module cache)"; done) &
    ticker=$!
    if ! total=$(cd "$dir" && go list -deps "$@" 2>"$errs" | wc -l); then
        kill "$ticker" 2>/dev/null
        grep -v '^go: downloading' "$errs" >&2
        rm -f "$errs"
        log "[$step/$steps] $label: resolving modules failed"
        exit 1
    fi
    kill "$ticker" 2>/dev/null
    rm -f "$errs"
    log "[$step/$steps] $label: compiling up to $total packages"
    set +o pipefail
    (cd "$dir" && go build -v -trimpath -ldflags "$ldflags" -o "$out" "$@" 2>&1) | {
        local t0=$SECONDS last=$SECONDS n=0 line elapsed
        while IFS= read -r line; do
            # a package path has no blank and no colon; anything else is a message: show it
            if [[ $line == "go: downloading "* ]]; then continue; fi
            if [[ $line == *[[:space:]:]* ]]; then echo "$line" >&2; continue; fi
            n=$((n + 1))
            if [ $((SECONDS - last)) -ge 20 ] && [ "$n" -lt "$total" ]; then
                last=$SECONDS elapsed=$((SECONDS - t0))
                log "[$step/$steps] $label: $n/$total packages ($((100 * n / total))%)," \
                    "$(minutes "$elapsed") so far, about $(minutes $((elapsed * (total - n) / n))) left"
            fi
        done
    }
    rc=${PIPESTATUS[0]}
    set -o pipefail
    if [ "$rc" -ne 0 ]; then
        log "[$step/$steps] $label: go build failed (exit $rc)"
        exit "$rc"
    fi
    log "[$step/$steps] $label: done"
}

# kube_ldflags VERSION: stamp the Kubernetes version into a binary, or clients see v0.0.0 (and
# a kubelet registers as v0.0.0)
kube_ldflags() {
    local version=$1 minor p flags=""
    minor=${version#v1.}
    minor=${minor%%.*}
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}
