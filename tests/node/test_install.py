"""The install section of docs/install.md, run by bash as written, on the real node.

The only additions: the image is present under the chart's default tag (`runbook-operator:0.1.0`,
the appVersion; a registry or `kind load` would put it there), and `helm install` gets the real
node's placement (its toleration and label), which a cluster without a tainted node does not need.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import yaml

from runbook_lab import incluster
from runbook_lab.images import Image
from runbook_lab.node import CTR, placement
from tests.fixtures.cluster import ROOT
from tests.fixtures.common import wait_for
from tests.node.conftest import RealNode


def install_block() -> str:
    """The first shell block under "Helm or kustomize" in docs/install.md, up to the kustomize way."""
    text = (ROOT / "docs" / "install.md").read_text()
    section = text[text.index("## Helm or kustomize") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "no shell block in docs/install.md's install section"
    return block.group(1).split("# kustomize")[0]


def test_the_readmes_helm_install_works_as_written(real_node: RealNode, operator_image: Image) -> None:
    block = install_block()
    assert "helm install runbook-operator charts/runbook-operator -n runbook-operator" in block
    chart = yaml.safe_load((incluster.CHART / "Chart.yaml").read_text())
    real_node.node.import_image(operator_image.archive)
    subprocess.run([str(CTR), "--address", str(real_node.node.socket), "-n", "k8s.io", "images", "tag", "--force",
                    f"docker.io/library/{operator_image.ref}", f"docker.io/library/runbook-operator:{chart['appVersion']}"],
                   check=True, capture_output=True)  # fmt: skip
    where = placement()
    wrapper = (
        'helm() { if [ "$1" = install ]; then command helm "$@" '
        f"--set-json='nodeSelector={json.dumps(where['nodeSelector'])}' "
        f"--set-json='tolerations={json.dumps(where['tolerations'])}'; else command helm \"$@\"; fi; }}\n"
    )
    env = {
        **os.environ,
        "PATH": f"{real_node.plane.bin}:{real_node.helm.binary.parent}:{os.environ['PATH']}",
        "KUBECONFIG": str(real_node.plane.kubeconfig),
        **{f"HELM_{d}_HOME": str(real_node.helm.home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
    }
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", wrapper + block], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    kubectl = real_node.kubectl
    try:
        kubectl("-n", incluster.NAMESPACE, "rollout", "status", "deployment/runbook-operator", "--timeout=180s")
        deployment = kubectl.get("deployment", "runbook-operator", incluster.NAMESPACE)
        assert deployment["status"]["readyReplicas"] == 2
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"runbook-operator:{chart['appVersion']}"  # the chart's default, from its appVersion
        wait_for(lambda: incluster.leader(kubectl.binary, kubectl.kubeconfig), 60, "a leader")
    finally:
        incluster.uninstall(real_node.helm)
        kubectl("delete", "namespace", incluster.NAMESPACE, "--wait=true", "--timeout=120s", check=False)
