#!/usr/bin/env bash
# `make cluster` / `make cluster-down`: the local control plane and, where this machine allows
# (Linux, root, containerd, runc and the CNI plugins), a real node beside kwok's fake one.
#   tools/cluster.sh up|down [DIR]      (DIR: .cluster; the node lives in DIR/node)
#   RUNBOOK_LAB_NODE=kwok               only kwok's fake node, even where a real one could run
# The real node changes host-wide state (one per machine); `down` stops it before the control
# plane and undoes all of it (lab/runbook_lab/node.py).
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:?usage: tools/cluster.sh up|down [DIR]}
dir=${2:-.cluster}
python=.venv/bin/python
cpbin=$(tools/controlplane/build.sh)

case $command in
up)
    "$python" -m runbook_lab.controlplane up "$dir" --bin "$cpbin"
    if reason=$("$python" -m runbook_lab.node check); then
        "$python" -m runbook_lab.node up "$dir/node" --controlplane "$dir" --bin "$(tools/node/build.sh)"
    else
        echo "real node: not started ($reason); pods run on kwok's fake node only"
    fi
    ;;
down)
    if [ -e "$dir/node/state.json" ]; then
        "$python" -m runbook_lab.node down "$dir/node" --controlplane "$dir"
    fi
    "$python" -m runbook_lab.controlplane down "$dir" --bin "$cpbin"
    ;;
*)
    echo "usage: tools/cluster.sh up|down [DIR]" >&2
    exit 2
    ;;
esac
