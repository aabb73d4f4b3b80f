"""The Helm chart (charts/runbook-operator) beside the kustomize manifests: lint, a server-side
dry run of every rendering, install then upgrade, and the same objects as `kubectl apply -k`.

helm is the pinned build of tools/helm/build.sh. Installing runs on a control plane of this
module's own: helm refuses to adopt the objects the session's cluster got from
`kubectl apply -k manifests/`, and must never own them (an uninstall would delete the RBAC that
the other tests' operator runs under). kwok plays the nodes and pods, so the checks are on
objects, not on running containers.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lab.controlplane import ControlPlane
from runbook_operator.adapters.lease import LeaseConfig
from runbook_operator.entrypoints.cli import build_parser
from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import wait_for

CHART = ROOT / "charts/runbook-operator"
RELEASE = NAMESPACE = "runbook-operator"  # as in manifests/, so the two renderings compare
EVERY_OPTION = (
    "--set=monitoring.serviceMonitor.enabled=true",
    "--set=monitoring.prometheusRule.enabled=true",
    "--set=monitoring.grafanaDashboard.enabled=true",
)
# The Prometheus Operator's kinds, so the optional parts can be dry-run; the stand-in takes any
# spec (their content is checked by promtool in tests/integration/monitoring).
MONITORING_KINDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


class Helm:
    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary, self.home, self.kubeconfig = binary, home, kubeconfig

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # its cache, config and data under the test's own directory, not the user's home
        env = {**os.environ, **{f"HELM_{d}_HOME": str(self.home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}}
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        proc = subprocess.run([str(self.binary), *args], env=env, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr}")
        return proc

    def template(self, *values: str) -> list[dict[str, Any]]:
        out = self("template", RELEASE, str(CHART), "-n", NAMESPACE, "--include-crds", *values).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def kind_and_name(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def by_kind_and_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {kind_and_name(o): o for o in objs}


@pytest.fixture(scope="module")
def tools() -> tuple[Path, Path]:
    """The pinned helm binary and the control plane's bin directory (kubectl), both cached builds."""
    helm = subprocess.run([str(ROOT / "tools/helm/build.sh")], capture_output=True, text=True, check=True)
    plane = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    return Path(helm.stdout.strip()), Path(plane.stdout.strip())


@pytest.fixture(scope="module")
def helm(tools: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools[0], tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def cluster(tools: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    plane = ControlPlane(tmp_path_factory.mktemp("helm-controlplane"), tools[1])
    plane.up()
    try:
        yield Kubectl(plane.bin / "kubectl", plane.kubeconfig)
    finally:
        plane.down()


@pytest.fixture(scope="module")
def cluster_helm(helm: Helm, cluster: Kubectl) -> Helm:
    return Helm(helm.binary, helm.home, cluster.kubeconfig)


def kustomize(tools: tuple[Path, Path], directory: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(tools[1] / "kubectl"), "kustomize", str(ROOT / directory)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def without_labels(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server would act on it, less what only names its installer."""
    obj = json.loads(json.dumps(obj))
    for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata", {})):
        meta.pop("labels", None)
        meta.pop("annotations", None)
    return obj


# -- offline: lint and rendering ------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), EVERY_OPTION], ids=["defaults", "every-option"])
def test_the_chart_lints_clean(helm: Helm, values: tuple[str, ...]) -> None:
    proc = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_the_chart_makes_the_objects_kubectl_apply_k_makes(helm: Helm, tools: tuple[Path, Path]) -> None:
    """RBAC rules, the Deployment, PDB, Service, CRDs and policies: one install method cannot drift
    from the other (the chart links the shared files; the Deployment is a template of its own)."""
    kustomized = [
        o for d in ("manifests", "manifests/monitoring", "manifests/default-budget") for o in kustomize(tools, d)
    ]
    kustomized = [o for o in kustomized if o["kind"] != "Namespace"]  # helm install --create-namespace
    charted = by_kind_and_name(helm.template(*EVERY_OPTION))
    assert sorted(charted) == sorted(map(kind_and_name, kustomized))
    for obj in kustomized:
        assert without_labels(charted[kind_and_name(obj)]) == without_labels(obj), kind_and_name(obj)
    pod_labels = charted["Deployment", "runbook-operator"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/name"] == "runbook-operator"  # what the Service and PDB select


def test_the_packaged_chart_carries_the_linked_files(helm: Helm, tmp_path: Path) -> None:
    """`helm package` resolves the links into files, so a chart archive installs without the repo."""
    helm("package", str(CHART), "-d", str(tmp_path))
    [archive] = tmp_path.glob("runbook-operator-*.tgz")
    out = helm("template", RELEASE, str(archive), "-n", NAMESPACE, "--include-crds", *EVERY_OPTION).stdout
    assert [doc for doc in yaml.safe_load_all(out) if doc] == helm.template(*EVERY_OPTION)


@pytest.mark.parametrize("rendering", ["kustomize", "helm"])
def test_the_deployment_runs_the_operator_on_the_lease_its_role_allows(
    helm: Helm, tools: tuple[Path, Path], rendering: str
) -> None:
    """The container's args are `runbook-operator run` flags with valid lease timings, and the
    Lease they elect on is the one the leader-election Role lets the ServiceAccount renew."""
    objs = by_kind_and_name(kustomize(tools, "manifests") if rendering == "kustomize" else helm.template())
    [container] = objs["Deployment", "runbook-operator"]["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.leader_elect
    LeaseConfig(namespace=NAMESPACE, identity="pod", name=args.leader_elect_id,
                lease_duration=args.leader_elect_lease_duration, renew_deadline=args.leader_elect_renew_deadline,
                retry_period=args.leader_elect_retry_period)  # fmt: skip
    rules = objs["Role", "runbook-operator-leader-election"]["rules"]
    assert [r["resourceNames"] for r in rules if "update" in r["verbs"]] == [[args.leader_elect_id]]


def test_values_reach_the_deployment(helm: Helm) -> None:
    objs = by_kind_and_name(helm.template(
        "--set=watchNamespaces={ishchat,payments,runbook-operator}", "--set=archive.dsnSecret.name=runbook-archive",
        "--set=intake.tokenSecret.name=am-token", "--set=intake.tokenSecret.key=bearer",
        "--set=intake.namespaces={ishchat}", "--set=intake.defaultNamespace=alerts",
        "--set=leaderElection.leaseDuration=30s", "--set=extraArgs={--resolved-ttl=72h}",
    ))  # fmt: skip
    pod = objs["Deployment", "runbook-operator"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert "--all-namespaces" not in args and {"--namespace=ishchat", "--namespace=payments"} <= set(args)
    assert {"--intake-namespaces=ishchat", "--intake-namespace=alerts", "--resolved-ttl=72h"} <= set(args)
    assert "--leader-elect-lease-duration=30s" in args
    assert "--default-budget=runbook-operator/default" in args
    assert objs["RemediationBudget", "default"]["spec"]["destructiveSteps"] == {"limit": 10, "window": "10m"}
    dsn = next(e for e in container["env"] if e["name"] == "RUNBOOK_ARCHIVE_DSN")
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "runbook-archive", "key": "dsn"}
    [volume] = pod["volumes"]
    assert volume["secret"]["secretName"] == "am-token"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]


def test_the_optional_parts_are_off_by_default(helm: Helm) -> None:
    kinds = {o["kind"] for o in helm.template()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_the_default_budget_must_be_watched_or_turned_off(helm: Helm) -> None:
    """Its namespace unwatched, the operator would never see it: refused, naming both ways out."""
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--set=watchNamespaces={ishchat}", check=False)
    assert proc.returncode != 0
    assert "watchNamespaces must include it (or set defaultBudget.enabled=false)" in proc.stderr
    off = by_kind_and_name(helm.template("--set=watchNamespaces={ishchat}", "--set=defaultBudget.enabled=false"))
    args = off["Deployment", "runbook-operator"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("RemediationBudget", "default") not in off and not [a for a in args if a.startswith("--default-budget")]


def test_two_replicas_without_leader_election_are_refused_by_name(helm: Helm) -> None:
    proc = helm("template", RELEASE, str(CHART), "--set=leaderElection.enabled=false", check=False)
    assert proc.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled: true" in proc.stderr
    one = helm.template("--set=leaderElection.enabled=false", "--set=replicaCount=1")
    args = by_kind_and_name(one)["Deployment", "runbook-operator"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--leader-elect")]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("replicas=2", "additional properties 'replicas' not allowed"),  # a typo of replicaCount
        ("leaderElection.leaseDuration=15", "at '/leaderElection/leaseDuration': got number, want string"),
        ("leaderElection.retryPeriod=2 seconds", "at '/leaderElection/retryPeriod'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("watchNamespaces[0]=Not_A_Namespace", "at '/watchNamespaces/0'"),
        ("extraArgs[0]=rm", "at '/extraArgs/0'"),
        ("monitoring.serviceMonitor.enable=true", "additional properties 'enable' not allowed"),
        ("intake.tokenSecret.key=", "at '/intake/tokenSecret/key'"),
    ],
)
def test_wrong_values_are_refused_on_install_naming_the_key(helm: Helm, value: str, said: str) -> None:
    """values.schema.json: Helm checks it on install, upgrade, lint and template."""
    for command in (("template", RELEASE), ("lint", "--strict")):
        proc = helm(*command, str(CHART), f"--set={value}", check=False)
        assert proc.returncode != 0, (command, proc.stdout)
        assert said in proc.stderr + proc.stdout, (command, proc.stderr, proc.stdout)


def test_the_image_tag_defaults_to_the_charts_app_version(helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    deployment = by_kind_and_name(helm.template())["Deployment", "runbook-operator"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"runbook-operator:{app_version}"
    tagged = by_kind_and_name(helm.template("--set=image.tag=dev-1"))["Deployment", "runbook-operator"]
    assert tagged["spec"]["template"]["spec"]["containers"][0]["image"] == "runbook-operator:dev-1"


# -- on the control plane -------------------------------------------------------------------------


def monitoring_stand_in_crds(kubectl: Kubectl) -> None:
    kubectl.apply(*[
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
         "metadata": {"name": f"{plural}.monitoring.coreos.com"},
         "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                  "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                  "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                      "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
        for kind, plural in MONITORING_KINDS.items()
    ])  # fmt: skip
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.mark.parametrize("values", [(), EVERY_OPTION], ids=["defaults", "every-option"])
def test_every_rendering_passes_the_api_servers_dry_run(helm: Helm, cluster: Kubectl, values: tuple[str, ...]) -> None:
    monitoring_stand_in_crds(cluster)
    # the CRDs for real first: a dry run cannot check Incidents' kinds against CRDs it only pretends to create
    crds = [o for o in helm.template(*values) if o["kind"] == "CustomResourceDefinition"]
    cluster("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(crds))
    cluster("create", "namespace", NAMESPACE, check=False)
    rendered = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--include-crds", *values).stdout
    proc = cluster("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "(server dry run)" in proc.stdout, proc.stdout


def test_install_then_upgrade_on_the_control_plane(cluster_helm: Helm, cluster: Kubectl) -> None:
    cluster("create", "namespace", NAMESPACE, check=False)
    cluster("-n", NAMESPACE, "create", "secret", "generic", "runbook-operator-intake", "--from-literal=token=t0k3n",
            check=False)  # fmt: skip
    cluster_helm("install", RELEASE, str(CHART), "-n", NAMESPACE)

    deployment = cluster.get("deployment", "runbook-operator", NAMESPACE)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    [container] = pod["containers"]
    assert "--leader-elect" in container["args"]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
    }  # fmt: skip
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "intake", "scheme": "HTTP"}
    pdb = cluster.get("pdb", "runbook-operator", NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"] == spec["selector"]
    role = cluster.get("role", "runbook-operator-leader-election", NAMESPACE)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["runbook-operator"],
         "verbs": ["get", "update"]},
    ]  # fmt: skip
    # the ServiceAccount may do exactly that with Leases there, and no more
    sa = f"--as=system:serviceaccount:{NAMESPACE}:runbook-operator"
    for verb, lease, allowed in [("create", "", "yes"), ("update", "runbook-operator", "yes"),
                                 ("update", "someone-elses", "no"), ("delete", "runbook-operator", "no")]:  # fmt: skip
        resource = f"leases.coordination.k8s.io/{lease}" if lease else "leases.coordination.k8s.io"
        can = cluster("auth", "can-i", verb, resource, "-n", NAMESPACE, sa, check=False)
        assert can.stdout.strip() == allowed, (verb, lease, can.stdout, can.stderr)
    for name in ("runbook-operator-consent", "runbook-operator-incident-scope"):
        cluster("get", "validatingadmissionpolicy", name)
    cluster("wait", "--for=condition=Established", "crd/incidents.remediation.ishchat.io", "--timeout=60s")

    # kwok plays the pods: the rollout completes on its single node (a required anti-affinity would not)
    cluster("-n", NAMESPACE, "rollout", "status", "deployment/runbook-operator", "--timeout=90s")
    before = deployment["metadata"]["generation"]
    cluster_helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE,
                 "--set=resources.requests.cpu=100m", "--set=replicaCount=3")  # fmt: skip
    after = cluster.get("deployment", "runbook-operator", NAMESPACE)
    assert after["metadata"]["generation"] > before
    assert after["spec"]["replicas"] == 3
    assert after["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "100m"
    assert after["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    cluster("-n", NAMESPACE, "rollout", "status", "deployment/runbook-operator", "--timeout=90s")
    history = json.loads(cluster_helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    wait_for(lambda: cluster.get("deployment", "runbook-operator", NAMESPACE)["status"].get("readyReplicas") == 3,
             60, "three ready replicas after the upgrade")  # fmt: skip
