#!/usr/bin/env bash
# Build the bench's Go controller-runtime peer (bench/peer) once into a cache outside the
# checkout and print the path of the binary. Later calls only print it (a warm run costs ~0 s).
# Same cache root as tools/controlplane/build.sh:
#   RUNBOOK_OPERATOR_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/runbook-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# GOTOOLCHAIN=auto: an older local Go fetches the toolchain the go.mod line names from the proxy
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io CGO_ENABLED=0 GOTOOLCHAIN=auto

# shellcheck source=../../tools/cache.sh
. "$here/../../tools/cache.sh"
bin=$(cache_bin bench-peer "$here/versions.env" "$here/go.mod" "$here/go.sum" "$here/main.go")
if [ -f "$bin/.complete" ]; then
    echo "$bin/peer"
    exit 0
fi
mkdir -p "$bin"
log() { echo "[bench-peer] $*" >&2; }
start=$SECONDS
log "building the Go controller-runtime peer once (cold: ~4 min of CPU, 4-8 min on a loaded 2-core machine; cached in $cache)"
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$bin/peer" .)
touch "$bin/.complete"
log "built in $((SECONDS - start)) s"
echo "$bin/peer"
