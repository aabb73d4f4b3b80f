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
# shellcheck source=../gobuild.sh
. "$here/../gobuild.sh"
start=$SECONDS
export step=0 steps=3  # read by build (gobuild.sh)

log "building the node once (about 7 min on 2 cores from an empty Go cache, most of it kubelet; cached in $cache)"
build "pause" "$here/pause" "$bin/pause" "-s -w" .
build "coredns $COREDNS_VERSION" "$here/coredns" "$bin/coredns" "" .

# Stamp the version as tools/controlplane/build.sh does, or kubelet registers as v0.0.0.
ldflags=$(kube_ldflags "$KUBERNETES_VERSION")
build "kubelet, kube-proxy $KUBERNETES_VERSION" "$cp/kubernetes" "$bin/" "$ldflags" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy

touch "$bin/.complete"
log "built in $(minutes $((SECONDS - start)))"
echo "$bin"
