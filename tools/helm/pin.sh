#!/usr/bin/env bash
# Regenerate the wrapper Go module that pins helm, as tools/controlplane/pin.sh does for
# the control plane: helm is a `tool` of a tiny module kept in this repo, so go.sum fixes
# every module it is built from.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOFLAGS=-mod=mod
rm -f "$here/go.mod" "$here/go.sum"
printf 'module runbook-operator/tools/helm\n\ngo 1.26.0\n' >"$here/go.mod"
(cd "$here" && go get -tool "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" && go mod tidy)
echo "pinned: helm $HELM_VERSION"
