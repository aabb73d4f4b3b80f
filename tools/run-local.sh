#!/usr/bin/env bash
# `make run`: the local ISH Chat lab. Starts (or reuses) the local control plane in .cluster/ and,
# where the machine allows, a real node (tools/cluster.sh), then `python -m runbook_lab lab`:
# PostgreSQL, Redis, Prometheus and Alertmanager on loopback addresses, ISH Chat's services in
# namespace ishchat (containers on the real node; else pods under kwok and a simulation on the
# host), the runbook pack, and the operator fed by Alertmanager:
#   OPERATOR=cluster (default)  installed by its Helm chart from its own image, 2 replicas on the node
#   OPERATOR=host               a host process in the foreground (debugging; also without a real node)
# Ctrl-C stops the lab; `make cluster-down` the node and the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
cpbin=$(tools/controlplane/build.sh)
tools/cluster.sh up .cluster
args=(--dir .lab --kubeconfig "$PWD/.cluster/kubeconfig" --kubectl "$cpbin/kubectl")
if [ -e .cluster/node/state.json ]; then
    args+=(--node "$PWD/.cluster/node")
    if [ "${OPERATOR:-cluster}" = cluster ]; then
        args+=(--helm "$(tools/helm/build.sh)")
    fi
fi
exec "$venv/python" -m runbook_lab lab "${args[@]}"
