#!/usr/bin/env bash
# Build the pinned binaries of a real Kubernetes node for the local control plane once
# into a cache outside the checkout and print the bin directory. Later calls only print
# it (a warm run costs ~0 s).
#   kubelet, kube-proxy  from the control plane's own module (../controlplane/kubernetes),
#                        so one pin (KUBERNETES_VERSION) governs control plane and node
#   coredns              the cluster DNS: CoreDNS as a library with a few plugins (coredns/)
#   pause                the pod sandbox's process, like Kubernetes' pause.c (pause/)
# All static (CGO_ENABLED=0). Same cache root as tools/controlplane/build.sh:
#   RUNBOOK_OPERATOR_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/runbook-operator)
# The first build says what it is doing on stderr: each of the three builds, how many
# packages it compiles, how far along it is and about how long is left.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cp=$here/../controlplane
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../controlplane/versions.env
. "$cp/versions.env"
# GOTOOLCHAIN=auto: an older local Go fetches the toolchain the go.mod lines name from the proxy
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io,go.etcd.io CGO_ENABLED=0 GOTOOLCHAIN=auto

# shellcheck source=../cache.sh
. "$here/../cache.sh"
# Keyed by what pins the binaries: the go.mod files (go.sum only checks them) and our sources.
bin=$(cache_bin node "$here"/versions.env "$here"/coredns/{go.mod,main.go} \
    "$here"/pause/{go.mod,main.go} "$cp"/versions.env "$cp"/kubernetes/go.mod)
if [ -f "$bin/.complete" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$bin"
log() { echo "[node] $*" >&2; }
minutes() { if [ "$1" -lt 90 ]; then echo "$1 s"; else echo "$((($1 + 30) / 60)) min"; fi; }
start=$SECONDS
step=0
steps=3

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

log "building the node once (about 7 min on 2 cores from an empty Go cache, most of it kubelet; cached in $cache)"
build "pause" "$here/pause" "$bin/pause" "-s -w" .
build "coredns $COREDNS_VERSION" "$here/coredns" "$bin/coredns" "" .

# Stamp the version as tools/controlplane/build.sh does, or kubelet registers as v0.0.0.
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build "kubelet, kube-proxy $KUBERNETES_VERSION" "$cp/kubernetes" "$bin/" "$ldflags" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy

touch "$bin/.complete"
log "built in $(minutes $((SECONDS - start)))"
echo "$bin"
