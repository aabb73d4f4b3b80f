#!/usr/bin/env bash
# Regenerate the peer's go.mod/go.sum from versions.env, as tools/helm/pin.sh does for helm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io
rm -f "$here/go.mod" "$here/go.sum"
printf 'module runbook-operator/bench/peer\n\ngo 1.26.0\n' >"$here/go.mod"
k=$KUBERNETES_MODULES_VERSION
(cd "$here" && go get "sigs.k8s.io/controller-runtime@$CONTROLLER_RUNTIME_VERSION" \
    "k8s.io/client-go@$k" "k8s.io/api@$k" "k8s.io/apimachinery@$k" "k8s.io/apiextensions-apiserver@$k" &&
    go mod tidy)
echo "pinned: controller-runtime $CONTROLLER_RUNTIME_VERSION, k8s.io/* $k"
