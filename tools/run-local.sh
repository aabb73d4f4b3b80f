#!/usr/bin/env bash
# `make run`: the local ISH Chat lab with the operator in the foreground.
# Starts (or reuses) the local control plane in .cluster/, then `python -m runbook_lab lab`:
# PostgreSQL, Redis, Prometheus, Alertmanager and a simulated ISH Chat on loopback
# addresses, its workloads in namespace ishchat (pods under kwok), the runbook pack, and
# the operator fed by Alertmanager. Ctrl-C stops the lab; `make cluster-down` the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
cpbin=$(tools/controlplane/build.sh)
"$venv/python" -m runbook_lab.controlplane up .cluster --bin "$cpbin"
exec "$venv/python" -m runbook_lab lab --dir .lab --kubeconfig "$PWD/.cluster/kubeconfig" --kubectl "$cpbin/kubectl"
