"""The lab's command line, ``python -m runbook_lab`` (or ``runbook-lab``).

``lab`` is what ``make run`` runs, ``demo`` what ``make demo`` runs, ``demo-server`` serves the
simulated ISH Chat instance manager the examples remediate. None of it is in the operator's
own ``runbook-operator`` command.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from runbook_lab import incluster, scenarios
from runbook_lab.controlplane import ControlPlane
from runbook_lab.demo import serve_forever
from runbook_lab.ishchat import SERVICES as ISHCHAT_SERVICES
from runbook_lab.lab import FAULTS, NAMESPACE, ONCALL_GROUP, ONCALL_USER, Lab, running_lab
from runbook_lab.node import Node
from runbook_operator.domain.resources import GROUP, INCIDENTS, VERSION
from runbook_operator.entrypoints import cli


def lab(
    directory: Path, kubeconfig: Path, kubectl: Path, node: Node | None = None, helm: incluster.Helm | None = None
) -> int:
    """Bring the lab up, run the operator (in the cluster, or in the foreground) until Ctrl-C, then stop everything."""

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background, where SIGINT is ignored
    started = time.monotonic()
    the_lab = Lab(directory, kubeconfig, kubectl, quiet=False, node=node, helm=helm)
    try:
        the_lab.up()
        assert the_lab.prometheus is not None and the_lab.alertmanager is not None
        print(
            f"==> lab up in {time.monotonic() - started:.1f}s; Prometheus {the_lab.prometheus.url}, "
            f"Alertmanager {the_lab.alertmanager.url}, control {the_lab.control_url}\n"
            "==> in another shell:\n"
            "      make demo                      # inject the twelve faults, follow the incidents, print a summary\n"
            f"      export KUBECONFIG={kubeconfig} PATH={kubectl.parent}:{Path(sys.executable).parent}:$PATH\n"
            f"      kubectl get incidents -n {NAMESPACE} -w\n"
            f"      kubectl runbook approve INCIDENT STEP -n {NAMESPACE}   # what AwaitingApproval waits for\n"
            f"      RUNBOOK_ARCHIVE_DSN=$(cat {the_lab.root / 'archive-dsn'}) runbook-operator replay --archive "
            f"--policies DIR -o markdown   # a policy change against what the operator archived\n"
            + (
                f"      kubectl logs -n {incluster.NAMESPACE} -l app.kubernetes.io/name=runbook-operator -f --prefix\n"
                "==> the operator runs in the cluster (Ctrl-C uninstalls it and stops the lab)"
                if the_lab.in_cluster_intake
                else "==> the operator's log follows (Ctrl-C stops the operator and the whole lab)"
            ),
            flush=True,
        )
        if the_lab.operator is None:  # in the cluster: wait for Ctrl-C
            signal.pause()
        assert the_lab.operator is not None
        code = the_lab.operator.wait()
        print(f"==> the operator exited ({code}); stopping the lab", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n==> stopping the lab", flush=True)
        return 0
    finally:
        the_lab.down()


def demo(directory: Path, faults: list[str] | None, timeout: float) -> int:
    """Inject faults wave by wave, follow their Incidents, print the summary; 0 if all ended as expected."""
    unknown = sorted(set(faults or ()) - set(FAULTS))
    if unknown:
        print(f"unknown fault(s) {', '.join(unknown)}; the lab has: {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    state = running_lab(directory)
    if state is None:
        print(f"no lab runs from {directory}: start it with `make run` first", file=sys.stderr)
        return 2
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(state["kubeconfig"]))  # type: ignore[no-untyped-call]

    def incidents() -> list[dict[str, Any]]:
        answer: Any = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, INCIDENTS)
        items: list[dict[str, Any]] = answer["items"]
        return items

    control = httpx.Client(base_url=state["control"], timeout=30)
    core = kubernetes.client.CoreV1Api(api.api_client)

    def containers() -> dict[str, dict[str, str]]:
        """ISH Chat workload -> pod -> the id of its running container."""
        found: dict[str, dict[str, str]] = {}
        raw: Any = core.list_namespaced_pod(NAMESPACE, _preload_content=False)
        for pod in json.loads(raw.data)["items"]:
            app = (pod["metadata"].get("labels") or {}).get("app", "")
            statuses = pod.get("status", {}).get("containerStatuses") or []
            if app in ISHCHAT_SERVICES and statuses and "running" in (statuses[0].get("state") or {}):
                found.setdefault(app, {})[pod["metadata"]["name"]] = statuses[0].get("containerID", "")
        return found

    def inject(fault: str) -> None:
        control.post(f"/lab/faults/{fault}").raise_for_status()
        print(f"{_now()}  inject  {fault}: {FAULTS[fault]}", flush=True)

    def approve(name: str, step: str) -> bool:
        """As the lab's on-call engineer would: the approve command, as themselves (impersonated here)."""
        argv = ["approve", name, step, "-n", NAMESPACE, "--yes", f"--kubeconfig={state['kubeconfig']}",
                f"--as={ONCALL_USER}", f"--as-group={ONCALL_GROUP}"]  # fmt: skip
        print(f"{_now()}  $ runbook-operator {' '.join(argv[:5])} --as={ONCALL_USER}", flush=True)
        return cli.main(argv) == 0

    def changed(outcome: scenarios.Outcome, phase: str) -> None:
        name = (outcome.incident or {}).get("metadata", {}).get("name", "")
        step = ((outcome.incident or {}).get("status") or {}).get("currentStep") or ""
        print(f"{_now()}  {outcome.alert:<22} {name:<42} {phase}{f' ({step})' if step else ''}", flush=True)

    wanted = set(faults or FAULTS)
    outcomes: list[scenarios.Outcome] = []
    control.post("/lab/clear").raise_for_status()
    hooks_before = len(control.get("/hooks").json())
    for number, wave in enumerate(scenarios.WAVES, 1):
        chosen = [fault for fault in wave if fault in wanted]
        if not chosen:
            continue
        print(f"{_now()}  wave {number}: {', '.join(chosen)}", flush=True)
        before = [item["metadata"]["name"] for item in incidents()]
        running_before = containers()
        played = scenarios.play(
            chosen, inject, incidents, timeout=timeout, ignore=before, on_change=changed, approve=approve
        )
        if state.get("node"):  # which real containers each scenario's restarts replaced
            running_after = containers()
            for outcome in played.values():
                for workload in scenarios.restarted(outcome, running_before):
                    outcome.replaced[workload] = scenarios.replacements(running_before, running_after, workload)
        outcomes += played.values()
        control.post("/lab/clear").raise_for_status()
        print(f"{_now()}  wave {number} done; faults cleared", flush=True)
    print()
    print(scenarios.table(outcomes))
    if state.get("node"):
        replaced = scenarios.replaced_table(outcomes)
        print("\ncontainers the operator's restarts replaced on the real node (old → new):")
        print(replaced or "  none")
    missed = [o.alert for o in outcomes if not o.ok]
    print(f"\n{len(outcomes) - len(missed)}/{len(outcomes)} scenarios ended as the runbook expects", end="")
    print(f"; not: {', '.join(missed)}" if missed else "")
    made, expired = _silences(outcomes, incidents)
    print(f"{made} Alertmanager silence(s) muted alerts while they were remediated; {expired} expired as "
          "their incidents ended")  # fmt: skip
    hooks = control.get("/hooks").json()[hooks_before:]
    sent = sum(o.messages()[0] for o in outcomes)
    print(f"{sent} message(s) sent by the scenarios' policies; {len(hooks)} reached the on-call webhook")
    if hooks:
        print("the last one:\n  " + "\n  ".join(str(hooks[-1]["body"].get("text", hooks[-1]["body"])).splitlines()))
    return 1 if missed else 0


def _silences(outcomes: list[scenarios.Outcome], incidents: Callable[[], list[dict[str, Any]]]) -> tuple[int, int]:
    """(made, expired) of the scenarios' incidents' silences, once each ended incident's are expired
    (the operator expires them right after the incident's last write; a few seconds at most)."""
    names = {(o.incident or {}).get("metadata", {}).get("name") for o in outcomes}

    def count() -> tuple[int, int]:
        found = [s for i in incidents() if i["metadata"]["name"] in names
                 for s in (i.get("status") or {}).get("silences") or []]  # fmt: skip
        return len(found), sum(1 for s in found if s.get("expiredAt"))

    deadline = time.monotonic() + 30
    made, expired = count()
    while expired < made and time.monotonic() < deadline:
        time.sleep(1)
        made, expired = count()
    return made, expired


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _lab(args: argparse.Namespace) -> int:
    node = helm = None
    if args.node:
        plane = ControlPlane(Path(args.node).parent, Path(args.kubectl).parent)
        node = Node(Path(args.node), plane)
        if not node.running():
            print(f"no real node runs from {args.node}: start it with `make cluster`", file=sys.stderr)
            return 2
    if node is not None and args.helm:
        helm = incluster.Helm(Path(args.helm), Path(args.dir).resolve().parent / ".lab-helm", Path(args.kubeconfig))
    return lab(Path(args.dir), Path(args.kubeconfig), Path(args.kubectl), node, helm)


def _demo(args: argparse.Namespace) -> int:
    return demo(Path(args.dir), args.fault, args.timeout)


def _demo_server(args: argparse.Namespace) -> int:
    serve_forever(args.host, args.port, healthy=args.healthy)
    return 0


def build_parser() -> argparse.ArgumentParser:
    called = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog="python -m runbook_lab" if called == "__main__.py" else called,
        description="The local ISH Chat lab for runbook-operator: development and demos, not part of the product.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    lab_cmd = sub.add_parser(
        "lab",
        help="the local ISH Chat lab: PostgreSQL, Redis, Prometheus, Alertmanager, simulated ISH Chat, the pack, "
        "and the operator in the foreground (what `make run` runs)",
    )
    lab_cmd.add_argument("--dir", default=".lab", help="where the lab keeps its data and state (default .lab)")
    lab_cmd.add_argument("--kubeconfig", required=True, help="the (local) cluster the lab's workloads run in")
    lab_cmd.add_argument("--kubectl", required=True, help="the kubectl binary to apply with")
    lab_cmd.add_argument("--node", help="a real node's directory (make cluster: .cluster/node): ISH Chat runs there")
    lab_cmd.add_argument(
        "--helm", help="with --node: the helm binary; the operator is installed in the cluster by its chart"
    )
    lab_cmd.set_defaults(func=_lab)

    demo_cmd = sub.add_parser(
        "demo", help="inject faults into the running lab, follow the incidents, print a summary (`make demo`)"
    )
    demo_cmd.add_argument("--dir", default=".lab", help="the lab's directory (default .lab)")
    demo_cmd.add_argument(
        "--fault", action="append", metavar="NAME", help="only this fault, e.g. redis-down (repeatable; default: all)"
    )
    demo_cmd.add_argument(
        "--timeout", type=float, default=240, metavar="SECONDS", help="how long to follow each wave (default 240)"
    )
    demo_cmd.set_defaults(func=_demo)

    server = sub.add_parser("demo-server", help="serve a simulated ISH Chat instance manager for the examples")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=18080)
    server.add_argument("--healthy", action="store_true", help="start healthy (default: down, so remediation has work)")
    server.set_defaults(func=_demo_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
