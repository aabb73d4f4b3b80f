#!/usr/bin/env bash
# Build the pinned helm once into a cache outside the checkout and print the path of the
# binary. Later calls only print it (a warm run costs ~0 s). Same cache root as
# tools/controlplane/build.sh:
#   RUNBOOK_OPERATOR_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/runbook-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# GOTOOLCHAIN=auto: an older local Go fetches the toolchain the go.mod line names from the proxy
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=auto

# shellcheck source=../cache.sh
. "$here/../cache.sh"
bin=$(cache_bin helm "$here/versions.env" "$here/go.mod" "$here/go.sum")
if [ -f "$bin/.complete" ]; then
    echo "$bin/helm"
    exit 0
fi
mkdir -p "$bin"
log() { echo "[helm] $*" >&2; }
start=$SECONDS
log "building helm $HELM_VERSION once (about 8 min on 2 cores from an empty Go cache; cached in $cache)"
# The version stamp, as helm's own Makefile sets it: `helm version` says v4.3.2, not v4.3.
(cd "$here" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    -o "$bin/helm" helm.sh/helm/v4/cmd/helm)
touch "$bin/.complete"
log "built in $((SECONDS - start)) s"
echo "$bin/helm"
