#!/usr/bin/env bash
# Build the pinned control-plane binaries once into a cache outside the checkout
# and print the bin directory. Later calls only print it (a warm run costs ~0 s).
#   RUNBOOK_OPERATOR_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/runbook-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io,go.etcd.io CGO_ENABLED=0

key=$(cat "$here"/versions.env "$here"/*/go.mod | sha256sum | cut -c1-12)
cache=${RUNBOOK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runbook-operator}
bin="$cache/controlplane/$key/bin"
if [ -f "$bin/.complete" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$bin"
log() { echo "[controlplane] $*" >&2; }
start=$(date +%s)

log "building etcd $ETCD_VERSION"
(cd "$here/etcd" && go build -trimpath -o "$bin/etcd" go.etcd.io/etcd/server/v3) >&2

log "building kwok $KWOK_VERSION"
(cd "$here/kwok" && go build -trimpath -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok) >&2

# Stamp the version, or clients see v0.0.0 and some refuse to talk.
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION"
(cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl) >&2

touch "$bin/.complete"
log "built in $(($(date +%s) - start)) s"
echo "$bin"
