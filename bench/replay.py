"""The replay benchmark: ``runbook-operator replay`` over a long history, in process.

    python bench/replay.py [--incidents 10000] [--policies 100] [--seed 7] [--jobs N]

The workload, built before anything is timed:

* **Policies**: the ISH Chat pack's twelve, then copies of them (``redis-down-copy3`` matching
  ``RedisDown3``, ...) up to ``--policies``, all in one namespace: the baseline.
* **Incidents**: ``--incidents`` of them, their alerts spread over the policies' alerts (1 in 20
  an alert no policy matches), each *recorded* by driving the real core as the operator does
  (``runbook_lab.recorded.live``) with seeded outcomes: a step fails 15 % of the time on its
  first try and 5 % on later ones and runs 0.1-5 s; in one incident of two, a person approves a
  step that waits for one, 30 s to 10 min later. Each becomes the body the archive hands the
  command (``ArchivedIncident.body()``: spec and final status).
* **Proposals**: *three changes*, the pack changes the end-to-end test replays
  (``runbook_lab.recorded.PACK_CHANGES``: failover without approval, Redis's restart removed, a
  narrower CPU match), on the pack and every copy: 3 policies in 12 change. *Every policy*: each
  policy's cooldown changed, so no incident keeps the policy it had and every one is replayed
  twice: the worst case.

Timed, for each case: what ``replay`` does once its input is read (``entrypoints.cli.replay``'s
``review``, the same function the command calls): each incident's status parsed, replayed under
the baseline and, where its policy changes, under the proposal, compared, then the report.
``--output markdown`` (what a pull request's CI job asks for) replays only the incidents whose
policy changes; ``--output json`` replays every incident. Reading the archive is one query
(``Archive.replayable``), not timed here.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "lab")]

from runbook_lab.recorded import PACK_CHANGES, T0, live  # noqa: E402
from runbook_operator import gitops  # noqa: E402
from runbook_operator.actions.catalog import default_registry  # noqa: E402
from runbook_operator.domain.matching import PolicySet  # noqa: E402
from runbook_operator.domain.model import Incident, Policy  # noqa: E402
from runbook_operator.domain.parsing import parse_policy  # noqa: E402
from runbook_operator.entrypoints.cli import replay as command  # noqa: E402
from runbook_operator.gitops import whatif  # noqa: E402

PACK = ROOT / "manifests" / "runbooks" / "ish-chat"
NAMESPACE = "ishchat"
TARGET_SECONDS = 10.0  # issue 25: 10,000 incidents x 100 policies
Change = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def three_changes(body: Mapping[str, Any]) -> Mapping[str, Any]:
    for change in PACK_CHANGES.values():
        body = change(body)
    return body


def every_policy(body: Mapping[str, Any]) -> Mapping[str, Any]:
    changed = copy.deepcopy(dict(body))
    changed["spec"].setdefault("limits", {})["cooldown"] = "11m"
    return changed


def policies(count: int, change: Change | None = None) -> list[Policy]:
    """``count`` policies: the pack, then copies matching their own alerts; ``change`` applied to each."""
    pack = [r.body for r in gitops.iter_kind(gitops.load_resources([PACK]), "RemediationPolicy")]
    check = default_registry().check
    found: list[Policy] = []
    for i in range(count):
        body = copy.deepcopy(dict(pack[i % len(pack)]))
        number = i // len(pack)
        if number:
            body["metadata"]["name"] += f"-copy{number}"
            body["spec"]["match"]["alerts"] = [f"{a}{number}" for a in body["spec"]["match"]["alerts"]]
        body["metadata"]["generation"] = 1
        parsed = parse_policy(change(body) if change else body, check)
        assert isinstance(parsed, Policy), parsed
        found.append(parsed)
    return found


def history(count: int, candidates: Sequence[Policy], seed: int) -> Iterator[dict[str, Any]]:
    """``count`` recorded incidents, as the archive's bodies."""
    rng = random.Random(seed)
    alerts = sorted(a for p in candidates for a in p.match.alerts)
    severities = ["Critical", "High", "Medium"]
    steps = sorted({s.name for p in candidates for s in (*p.diagnose, *p.remediate, *p.verify)})
    for n in range(count):
        alert = rng.choice(alerts) if rng.random() > 0.05 else f"Unmatched{n % 7}"
        spec = {"alert": alert, "severity": rng.choice(severities), "labels": {"service": "instance-manager"},
                "summary": f"{alert} on pod {n}"}  # fmt: skip
        body = {"metadata": {"name": f"inc-{n:05d}", "namespace": NAMESPACE, "generation": 1}, "spec": spec}
        outcomes: dict[tuple[str, int], tuple[bool, float]] = {}

        def script(step: str, attempt: int, outcomes: dict[tuple[str, int], tuple[bool, float]] = outcomes) -> tuple[
                bool, float]:  # fmt: skip
            if (step, attempt) not in outcomes:
                fails = rng.random() < (0.15 if attempt == 1 else 0.05)
                outcomes[(step, attempt)] = (not fails, round(rng.uniform(0.1, 5.0), 3))
            return outcomes[(step, attempt)]

        approvals = {s: ("alice", rng.uniform(30, 600)) for s in steps} if n % 2 else {}
        recorded = live(Incident.from_body(body), candidates, script, approvals, T0 + timedelta(minutes=n))
        yield {**body, "status": recorded.status.to_dict()}


@dataclass(frozen=True)
class Result:
    case: str
    output: str
    jobs: int
    incidents: int
    policies: int
    seconds: float
    replayed: int  # incidents replayed (a path computed); the rest kept their policy
    changed: int
    kinds: Mapping[str, int]


def measure(case: str, bodies: Sequence[Mapping[str, Any]], baseline: PolicySet, proposal: PolicySet, output: str,
            jobs: int) -> Result:  # fmt: skip
    every_path = output == "json"
    started = time.perf_counter()
    with command.paused_gc():  # as the command runs
        reviewed = command.review([(b, baseline, proposal) for b in bodies], None, jobs, every_path)
        summary = whatif.Summary(tuple(v for v, _ in reviewed))
        report = whatif.as_json(summary, [t for _, t in reviewed]) if every_path else whatif.markdown(summary)
    seconds = time.perf_counter() - started
    assert report
    kinds = {k: n for k in whatif.KINDS if (n := summary.count(k))}
    replayed = sum(bool(v.before) or bool(text) for v, text in reviewed)
    used = jobs if len(bodies) >= command.PARALLEL_FROM else 1  # fewer are replayed in one process
    return Result(case, output, used, len(bodies), len(baseline), seconds, replayed, len(summary.changed()), kinds)


def run(incidents: int = 10_000, count: int = 100, seed: int = 7, jobs: int | None = None,
        log: Any = print) -> list[Result]:  # fmt: skip
    """The cases, each timed once after one untimed warm-up of the smallest (imports, caches)."""
    jobs = jobs or len(os.sched_getaffinity(0))
    baseline = PolicySet(policies(count))
    started = time.perf_counter()
    bodies = list(history(incidents, list(baseline), seed))
    log(f"replay: {incidents:,} incidents recorded under {count} policies in {time.perf_counter() - started:.1f} s")
    proposals = {"three changes": PolicySet(policies(count, three_changes)),
                 "every policy": PolicySet(policies(count, every_policy))}  # fmt: skip
    measure("warm-up", bodies[:200], baseline, proposals["three changes"], "json", 1)
    results = []
    for case, output, j in (("three changes", "markdown", jobs), ("three changes", "json", jobs),
                            ("every policy", "json", jobs), ("three changes", "json", 1)):  # fmt: skip
        result = measure(case, bodies, baseline, proposals[case], output, j)
        log(
            f"replay: {result.incidents:,} incidents x {count} policies, {case}, --output {output}, {j} job(s): "
            f"{result.seconds:.2f} s ({result.replayed:,} replayed, {result.changed:,} changed: {dict(result.kinds)})"
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, help="default: the CPUs this process may use")
    args = parser.parse_args(argv)
    results = run(args.incidents, args.policies, args.seed, args.jobs)
    bound = TARGET_SECONDS * args.incidents / 10_000
    print(f"\n| case | output | processes | replayed | seconds | target < {bound:g} s |\n|---|---|---|---|---|---|")
    for r in results:
        met = ("yes" if r.seconds < bound else "**no**") if r.jobs > 1 else "(baseline)"
        print(f"| {r.case} | {r.output} | {r.jobs} | {r.replayed:,} | {r.seconds:.2f} | {met} |")
    return 0 if all(r.seconds < bound for r in results if r.jobs > 1) else 1


if __name__ == "__main__":
    sys.exit(main())
