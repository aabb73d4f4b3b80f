"""A hostile policy in one namespace does not delay an ordinary Incident in another (issue 13).

The hostile policy holds the worst that still passes apply: a template that loops three
deep over an incident's 1 KiB label (a billion iterations before the budget), and a
``when`` with a comprehension over a literal list filling its 1024 characters. Before
the budgets the template never finished and the whole operator stalled.
"""

from __future__ import annotations

import time
from pathlib import Path

from runbook_lab.demo import DemoService
from tests.e2e.conftest import Kubectl, OperatorProcess
from tests.e2e.test_foundation import demo_policy, incident, settled

HOSTILE_INCIDENTS = 10
LOOPS = "{% for a in incident.labels.big %}{% for b in incident.labels.big %}{% for c in incident.labels.big %}"
TEMPLATE = f"http://127.0.0.1:1/{LOOPS}{{{{ c }}}}{{% endfor %}}{{% endfor %}}{{% endfor %}}"
LIST = "[" + ",".join(["0"] * 440) + "]"
WHEN = f"{LIST}.all(steps, steps == 0 || steps == 1 || steps == 2) || true"


def hostile_policy(namespace: str) -> dict[str, object]:
    steps = [{"name": f"probe-{i}", "action": "http.check", "with": {"url": TEMPLATE}, "when": WHEN,
              "continueOnFailure": True} for i in range(5)]  # fmt: skip
    policy = demo_policy("hostile", namespace, "http://127.0.0.1:1", diagnose=steps, remediate=[], verify=[])
    policy["spec"]["match"] = {"alerts": ["Hostile"]}  # type: ignore[index]
    return policy


def resolve_seconds(kubectl: Kubectl, name: str, namespace: str) -> float:
    started = time.monotonic()
    kubectl.apply(incident(name, namespace))
    settled(kubectl, name, namespace, "Resolved", timeout=60)
    return time.monotonic() - started


def test_a_hostile_policy_does_not_delay_another_namespace(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, other_namespace: str, demo: DemoService
) -> None:
    assert len(WHEN) <= 1024
    kubectl.apply(demo_policy("im-down", namespace, demo.url))
    baseline = resolve_seconds(kubectl, "baseline", namespace)

    kubectl.apply(hostile_policy(other_namespace))
    big = {"big": "x" * 1024}
    for i in range(HOSTILE_INCIDENTS):
        kubectl.apply(incident(f"hostile-{i}", other_namespace, alert="Hostile", labels=big))
    demo.break_()
    under_attack = resolve_seconds(kubectl, "under-attack", namespace)
    print(f"ordinary incident: {baseline:.2f} s alone, {under_attack:.2f} s beside {HOSTILE_INCIDENTS} hostile ones")
    assert under_attack - baseline < 1.0

    hostile = settled(kubectl, "hostile-0", other_namespace, "Resolved")  # no verify steps: each probe failed
    probe = next(s for s in hostile["steps"] if s["name"] == "probe-0")
    assert probe["state"] == "Failed" and "operations" in probe["message"], probe


# Issue 22, finding 1: the red team's template, with the incident's labels in place of its
# constants so it passes apply. Before: 95 MB -> 1.14 GB and /healthz unanswered for 3 s.
MEMORY_TEMPLATE = "{{ (incident.labels.a * 32768) | list | join(incident.labels.b * 32768) }}"  # 1 GiB before


def peak_rss_mib(op: OperatorProcess) -> float:
    assert op.proc is not None
    status = Path(f"/proc/{op.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def test_a_template_that_would_build_a_gigabyte_is_stopped_before_it_builds(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    step = {"name": "probe", "action": "http.check", "continueOnFailure": True,
            "with": {"url": "http://127.0.0.1:1/", "bodyContains": MEMORY_TEMPLATE}}  # fmt: skip
    policy = demo_policy("memory", namespace, "http://127.0.0.1:1", diagnose=[step], remediate=[], verify=[])
    policy["spec"]["match"] = {"alerts": ["Memory"]}  # type: ignore[index]
    kubectl.apply(policy)
    before = peak_rss_mib(operator)
    latencies: list[float] = []
    for i in range(5):
        kubectl.apply(incident(f"memory-{i}", namespace, alert="Memory", labels={"a": "x", "b": "z"}))
    for i in range(5):
        deadline = time.monotonic() + 60
        while True:  # /healthz is asked at least once per incident, however fast it resolved
            started = time.monotonic()
            assert operator.alive()
            latencies.append(time.monotonic() - started)
            phase = kubectl.get("incident", f"memory-{i}", namespace).get("status", {}).get("phase")
            if phase == "Resolved":
                break
            assert time.monotonic() < deadline, phase
    status = kubectl.get("incident", "memory-0", namespace)["status"]
    probe = next(s for s in status["steps"] if s["name"] == "probe")
    assert probe["state"] == "Failed" and "was refused by the sandbox" in probe["message"], probe
    after = peak_rss_mib(operator)
    print(f"operator peak RSS {before:.0f} MiB -> {after:.0f} MiB; /healthz worst {max(latencies) * 1e3:.0f} ms")
    assert after - before < 32 and max(latencies) < 1.0
