#!/usr/bin/env bash
# `make run`: the operator on a cluster, with the demo endpoint the examples use.
# Uses $KUBECONFIG when it reaches a cluster (kind, a real one); otherwise starts
# (or reuses) the local control plane in .cluster/. Ctrl-C stops the operator and
# the demo endpoint; `make cluster-down` stops the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
reachable() {
    "$venv/python" - <<'PY' >/dev/null 2>&1
import kubernetes
kubernetes.config.load_kube_config()
kubernetes.client.VersionApi().get_code(_request_timeout=5)
PY
}

if [ -n "${KUBECONFIG:-}" ] && reachable; then
    echo "==> using the cluster KUBECONFIG points at ($KUBECONFIG)"
    kubectl=$(command -v kubectl || echo "$(tools/controlplane/build.sh)/kubectl")
else
    cpbin=$(tools/controlplane/build.sh)
    "$venv/python" -m runbook_operator.lab.controlplane up .cluster --bin "$cpbin"
    export KUBECONFIG=$PWD/.cluster/kubeconfig
    kubectl=$cpbin/kubectl
fi

"$kubectl" apply -k crds/ >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/incidents.remediation.ishchat.io crd/remediationpolicies.remediation.ishchat.io >/dev/null
echo "==> CRDs installed"

"$venv/runbook-operator" demo-server --port "${DEMO_PORT:-18080}" &
demo=$!
trap 'kill "$demo" 2>/dev/null; wait "$demo" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

cat <<MSG
==> in another shell:
      export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$kubectl"):\$PATH
      kubectl apply -f manifests/examples/
      kubectl get incidents -w
==> starting the operator (Ctrl-C stops it and the demo endpoint)
MSG
"$venv/runbook-operator" run --all-namespaces
