#!/usr/bin/env bash
# Set the version everywhere it is written: runbook_operator.__version__ is the source, and the
# chart, the manifests and the install docs repeat it because Helm and kustomize cannot read it.
# tests/unit/test_version.py fails when one of them differs.   Usage: tools/version.sh 0.2.0
set -euo pipefail
cd "$(dirname "$0")/.."
new=${1:?usage: tools/version.sh NEW_VERSION}
[[ $new =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$ ]] || { echo "not a semantic version: $new" >&2; exit 2; }
old=$(sed -n 's/^__version__ = "\([^"]*\)".*/\1/p' operator/runbook_operator/__init__.py)
files=(operator/runbook_operator/__init__.py charts/runbook-operator/Chart.yaml manifests/deployment.yaml
       Dockerfile docs/install.md)
sed -i "s/runbook-operator:${old//./\\.}\b/runbook-operator:$new/g" "${files[@]}"
sed -i "s/^__version__ = \"${old//./\\.}\"/__version__ = \"$new\"/" operator/runbook_operator/__init__.py
sed -i "s/^version: ${old//./\\.}$/version: $new/; s/^appVersion: \"${old//./\\.}\"$/appVersion: \"$new\"/" \
    charts/runbook-operator/Chart.yaml
echo "$old -> $new in ${files[*]}; add it to CHANGELOG.md"
