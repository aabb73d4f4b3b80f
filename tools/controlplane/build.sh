#!/usr/bin/env bash
# Build the pinned control-plane binaries once into a cache outside the checkout
# and print the bin directory. Later calls only print it (a warm run costs ~0 s).
#   RUNBOOK_OPERATOR_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/runbook-operator)
# The first build says what it is doing on stderr: each of the three builds, how many
# packages it compiles, how far along it is and about how long is left.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# GOTOOLCHAIN=auto: an older local Go fetches the toolchain the go.mod lines name from the proxy
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io,go.etcd.io CGO_ENABLED=0 GOTOOLCHAIN=auto

# shellcheck source=../cache.sh
. "$here/../cache.sh"
bin=$(cache_bin controlplane "$here"/versions.env "$here"/*/go.mod)
if [ -f "$bin/.complete" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$bin"
log() { echo "[controlplane] $*" >&2; }
# shellcheck source=../gobuild.sh
. "$here/../gobuild.sh"
start=$SECONDS
export step=0 steps=3  # read by build (gobuild.sh)

log "building the control plane once (about 14 min on 2 cores, most of it kube-apiserver; cached in $cache)"
build "etcd $ETCD_VERSION" "$here/etcd" "$bin/etcd" "" go.etcd.io/etcd/server/v3
build "kwok $KWOK_VERSION" "$here/kwok" "$bin/kwok" "" sigs.k8s.io/kwok/cmd/kwok

# Stamp the version, or clients see v0.0.0 and some refuse to talk.
ldflags=$(kube_ldflags "$KUBERNETES_VERSION")
build "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION" \
    "$here/kubernetes" "$bin/" "$ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl

touch "$bin/.complete"
log "built in $(minutes $((SECONDS - start)))"
echo "$bin"
