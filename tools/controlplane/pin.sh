#!/usr/bin/env bash
# Regenerate the wrapper Go modules that pin the control-plane binaries.
# `go install pkg@version` refuses modules with replace directives (etcd,
# kubernetes), so each binary is a `tool` of a tiny module kept in this repo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io,go.etcd.io

wrapper() {  # dir module-path
    rm -rf "${here:?}/$1" && mkdir -p "$here/$1"
    printf 'module runbook-operator/controlplane/%s\n\ngo 1.25.0\n' "$1" >"$here/$1/go.mod"
}

wrapper etcd
(cd "$here/etcd" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy)

wrapper kwok
(cd "$here/kwok" && go get -tool "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" && go mod tidy)

# k8s.io/kubernetes requires its staging modules as v0.0.0; replace each one
# with the published v0.<minor>.<patch> and copy its godebug line. kubelet and
# kube-proxy are tools here too (built by tools/node/build.sh), so this one pin
# governs the Kubernetes version of the control plane and of the node alike.
wrapper kubernetes
kgomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
staging="v0.${KUBERNETES_VERSION#v1.}"
{
    grep -E '^godebug ' "$kgomod" || true
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0(\s|$)' "$kgomod" | awk -v v="$staging" '{printf "replace %s => %s %s\n", $1, $1, v}'
} >>"$here/kubernetes/go.mod"
(cd "$here/kubernetes" &&
    for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
        go get -tool "k8s.io/kubernetes/cmd/$cmd@$KUBERNETES_VERSION"
    done && go mod tidy)
echo "pinned: etcd $ETCD_VERSION, kubernetes $KUBERNETES_VERSION, kwok $KWOK_VERSION"
