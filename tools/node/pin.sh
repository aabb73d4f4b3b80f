#!/usr/bin/env bash
# Regenerate the wrapper Go module that pins CoreDNS (coredns/go.mod and go.sum; main.go
# is ours and stays). kubelet and kube-proxy are pinned by ../controlplane/pin.sh, in the
# control plane's own module; pause has no dependency to pin.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOFLAGS=-mod=mod GONOSUMDB=k8s.io,sigs.k8s.io

rm -f "$here/coredns/go.mod" "$here/coredns/go.sum"
printf 'module runbook-operator/node/coredns\n\ngo 1.25.0\n' >"$here/coredns/go.mod"
(cd "$here/coredns" && go get "github.com/coredns/coredns@$COREDNS_VERSION" && go mod tidy)
echo "pinned: coredns $COREDNS_VERSION"
