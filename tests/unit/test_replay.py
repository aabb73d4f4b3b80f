"""Replay (issue 25): the core driven again over a recorded incident, with a simulated clock."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_lab.recorded import T0, live
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.status import Phase, Status
from runbook_operator.gitops.replay import Recording, replay
from tests.unit.builders import check, incident, policy, policy_body, request


def redis_policy(**extra: Any) -> list[Candidate]:
    spec: dict[str, Any] = {
        "match": {"alerts": ["RedisDown"]},
        "diagnose": [check("ping")],
        "remediate": [request("restart")],
        "verify": [check("healthy", retries=2)],
        "limits": {"maxAttempts": 2},
    }
    return [policy("redis", **(spec | extra))]


def steps_of(status: Status) -> list[tuple[str, str, int, str]]:
    return [(r.stage, r.name, r.attempt, r.state) for r in status.steps]


def test_an_unchanged_policy_replays_the_recorded_run_exactly() -> None:
    def script(step: str, attempt: int) -> tuple[bool, float]:
        return (not (step == "healthy" and attempt == 1), {"ping": 0.2, "restart": 1.5, "healthy": 3.0}[step])

    recorded = live(incident("RedisDown"), redis_policy(), script)
    assert recorded.status.phase == Phase.RESOLVED and recorded.status.attempts == 2
    (path,) = replay(recorded, redis_policy())
    assert (path.policy, path.end, path.assumed) == ("redis", "Resolved", ())
    assert [(r.stage, r.name, r.ok) for r in path.ran] == [
        (s[0], s[1], s[3] == "Succeeded") for s in steps_of(recorded.status)
    ]
    took = (datetime.fromisoformat(recorded.status.resolvedAt.replace("Z", "+00:00")) - T0).total_seconds()  # type: ignore[union-attr]
    assert abs(path.seconds - took) < 1.0  # timestamps are to the second; durations to the millisecond


@settings(max_examples=40, deadline=None)
@given(
    fails=st.sets(st.sampled_from(["ping", "restart", "healthy"])),
    attempts=st.integers(1, 3),
    settle=st.integers(0, 30),
)
def test_any_recorded_run_of_an_unchanged_policy_is_reproduced(fails: set[str], attempts: int, settle: int) -> None:
    """A property: whatever failed in the recording, replaying the same policy makes the same
    steps, in the same order, with the same outcomes, and ends in the same phase."""
    candidates = redis_policy(limits={"maxAttempts": attempts}, settle=f"{settle}s")

    def script(step: str, attempt: int) -> tuple[bool, float]:
        return (step not in fails or attempt > 1, 0.5)

    recorded = live(incident("RedisDown"), candidates, script)
    (path,) = replay(recorded, candidates)
    assert path.end == str(recorded.status.phase) and path.assumed == ()
    assert [(r.stage, r.name, r.ok) for r in path.ran] == [
        (s[0], s[1], s[3] == "Succeeded") for s in steps_of(recorded.status)
    ]


def test_a_step_the_recording_never_saw_forks_into_success_and_failure() -> None:
    recorded = live(incident("RedisDown"), redis_policy(), lambda s, a: (True, 1.0))
    proposed = redis_policy(remediate=[request("restart"), request("flush", url="http://127.0.0.1:1/admin/flush")])
    paths = replay(recorded, proposed)
    assert sorted(p.assumed for p in paths) == [(("flush", "fail"),), (("flush", "ok"),)]
    ends = {p.assumed: p.end for p in paths}
    assert ends[(("flush", "ok"),)] == "Resolved"
    assert ends[(("flush", "fail"),)] == "Escalated"  # the round fails twice: maxAttempts 2, then on-call
    (only,) = replay(recorded, proposed, assume="ok")
    assert only.assumed == (("flush", "ok"),) and not next(r for r in only.ran if r.name == "flush").known


def test_removing_the_approval_of_a_destructive_step_shows_it_running_unapproved() -> None:
    failover = request("failover", url="http://127.0.0.1:1/admin/failover", **{"with": {
        "url": "http://127.0.0.1:1/admin/failover", "destructive": True}})  # fmt: skip
    guarded = redis_policy(remediate=[failover])
    recorded = live(incident("RedisDown"), guarded, lambda s, a: (True, 1.0), approvals={"failover": ("alice", 120)})
    assert recorded.status.phase == Phase.RESOLVED
    (before,) = replay(recorded, guarded)
    assert before.end == "Resolved" and before.unapproved_destructive == ()
    assert next(r for r in before.ran if r.name == "failover").approved_by == "alice"
    assert before.seconds >= 120  # it waited for alice, as it did
    unguarded = redis_policy(remediate=[{**failover, "requiresApproval": False}])
    (after,) = replay(recorded, unguarded)
    assert after.unapproved_destructive == ("failover",) and after.seconds < 120


def test_a_step_nobody_approved_then_waits_and_the_replay_says_so() -> None:
    failover = request("failover", **{"with": {"url": "http://127.0.0.1:1/admin/failover", "destructive": True}})
    recorded = live(incident("RedisDown"), redis_policy(), lambda s, a: (True, 1.0))
    (path,) = replay(recorded, redis_policy(remediate=[failover]))
    assert (path.end, path.waits_for_approval) == ("AwaitingApproval", ("failover",))


def test_a_narrower_match_leaves_the_incident_without_a_policy() -> None:
    recorded = live(incident("RedisDown"), redis_policy(), lambda s, a: (True, 1.0))
    (path,) = replay(recorded, redis_policy(match={"alerts": ["RedisDown"], "severities": ["Critical"]}))
    assert (path.policy, path.end, path.ran) == (None, "NoPolicy", ())


# -- the command: files in, a verdict out, an exit code for CI ---------------------------------


def _write(path: Any, *docs: dict[str, Any]) -> str:
    import yaml

    path.write_text(yaml.safe_dump_all(list(docs)))
    return str(path)


HOSTILE = "Redis<b>Down</b>|`x`*y*"  # an alert name comes from the alert: Markdown must show it as text
API = "remediation.ishchat.io/v1alpha1"
FAILOVER = {"name": "failover", "action": "http.request",
            "with": {"url": "http://127.0.0.1:1/admin/failover", "destructive": True}}  # fmt: skip


def _rpol(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "RemediationPolicy", **policy_body("redis", **spec)}


def _incidents(path: Any, bodies: list[dict[str, Any]]) -> str:
    """A file of Incidents as `kubectl get inc -o yaml` writes it."""
    return _write(path, {"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": API, "kind": "Incident", **b}
                                                                        for b in bodies]})  # fmt: skip


def _failover_policies(tmp_path: Any) -> None:
    """base/: the failover waits for approval (the history's policy); pr/: it no longer does."""
    spec = {"match": {"alerts": ["RedisDown"]}, "diagnose": [check("ping")], "verify": [check("healthy", retries=2)],
            "limits": {"maxAttempts": 2}}  # fmt: skip
    for folder, step in (("base", FAILOVER), ("pr", {**FAILOVER, "requiresApproval": False})):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder / "p.yaml", _rpol(**spec, remediate=[request("restart"), step]))


def _policy_doc(failover_approval: bool) -> dict[str, Any]:
    return _rpol(match={"alerts": [HOSTILE]}, diagnose=[check("ping")], verify=[check("healthy")],
                 remediate=[{**FAILOVER, "requiresApproval": failover_approval}])  # fmt: skip


def test_the_command_names_a_risky_change_and_fails_ci_on_it(tmp_path: Any, capsys: Any) -> None:
    import json

    from runbook_operator.domain.parsing import parse_policy
    from runbook_operator.entrypoints.cli import main
    from tests.unit.builders import REGISTRY

    guarded = parse_policy(_policy_doc(True), REGISTRY.check)
    inc = incident(HOSTILE)
    recorded = live(inc, [guarded], lambda s, a: (True, 1.0), approvals={"failover": ("alice", 60)})  # type: ignore[list-item]
    body = {"metadata": {"name": "redis-down-1", "namespace": "ns"}, "spec": dict(inc.spec),
            "status": recorded.status.to_dict()}  # fmt: skip
    (tmp_path / "base").mkdir(), (tmp_path / "pr").mkdir()
    incidents = _incidents(tmp_path / "incidents.yaml", [body])
    _write(tmp_path / "base" / "p.yaml", _policy_doc(True))
    _write(tmp_path / "pr" / "p.yaml", _policy_doc(False))
    common = ["replay", "--incidents", incidents, "--baseline", str(tmp_path / "base"), "--policies"]

    assert main([*common, str(tmp_path / "base")]) == 0  # nothing changes
    assert "0 of 1 incident(s) would change" in capsys.readouterr().out

    code = main([*common, str(tmp_path / "pr"), "--fail-on", "unapproved-destructive,unmatched"])
    out, err = capsys.readouterr()
    assert code == 1 and err.strip() == "runbook-operator replay: --fail-on: unapproved-destructive (1)"
    assert "ns/redis-down-1" in out and "unapproved-destructive" in out and "Resolved after" in out

    assert main([*common, str(tmp_path / "pr"), "--output", "json"]) == 0  # no --fail-on: reported, not failed
    document = json.loads(capsys.readouterr().out)
    assert document["schema"] == 1 and document["summary"]["kinds"]["unapproved-destructive"] == 1
    (only,) = document["incidents"]
    assert only["changes"][0] == "unapproved-destructive"
    assert [s["approvedBy"] for s in only["before"][0]["steps"] if s["name"] == "failover"] == ["alice"]
    assert only["after"][0]["unapprovedDestructive"] == ["failover"]

    assert main([*common, str(tmp_path / "pr"), "--output", "markdown"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "redis" in line and line.startswith("|"))
    assert row.count("|") - row.count("\\|") == 7  # six cells: the alert's own | is escaped
    assert "<b>" not in text and "Redis&lt;b>Down&lt;/b>" in text
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable("table").render(text)  # as GitHub renders a comment
    assert "<b>" not in html and "<em>" not in html and "<code>" not in html
    assert html.count("<td>") == 6 and "Redis&lt;b&gt;Down&lt;/b&gt;|`x`*y*" in html
    assert "would run failover without approval" in text


def test_bad_input_is_exit_2_with_one_line(tmp_path: Any, capsys: Any) -> None:
    from runbook_operator.entrypoints.cli import main

    (tmp_path / "p").mkdir()
    empty = _write(tmp_path / "none.yaml", {"apiVersion": "v1", "kind": "List", "items": []})
    assert (
        main(["replay", "--incidents", empty, "--baseline", str(tmp_path / "p"), "--policies", str(tmp_path / "p")])
        == 2
    )
    assert capsys.readouterr().err.startswith("runbook-operator replay: no Incident to replay")


# -- what makes it fast, and must not change what it says -----------------------------------------


def _history(count: int) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """``count`` recorded RedisDown incidents (some failing, some approved) as the API serves them."""
    failover = request("failover", **{"with": {"url": "http://127.0.0.1:1/admin/failover", "destructive": True}})
    candidates = redis_policy(remediate=[request("restart"), failover])
    bodies = []
    for n in range(count):

        def script(step: str, attempt: int, n: int = n) -> tuple[bool, float]:
            return (not (step == "healthy" and attempt == 1 and n % 3 == 0), 0.5 + n % 4)

        approvals = {"failover": ("alice", 30.0 + n)} if n % 2 else {}
        recorded = live(incident("RedisDown"), candidates, script, approvals)
        bodies.append({"metadata": {"name": f"inc-{n}", "namespace": "ns", "generation": 1},
                       "spec": {"alert": "RedisDown"}, "status": recorded.status.to_dict()})  # fmt: skip
    return candidates, bodies


def test_an_incident_whose_policy_the_proposal_keeps_needs_no_replay_and_changes_nowhere() -> None:
    """``every_path=False`` (table, Markdown) skips the incidents the same policy handles in both:
    the verdicts it gives are the ones the full replay gives."""
    from runbook_operator.gitops.whatif import compare

    candidates, bodies = _history(6)
    unguarded = redis_policy(remediate=[request("restart"), {**request("failover", **{"with": {
        "url": "http://127.0.0.1:1/admin/failover", "destructive": True}}), "requiresApproval": False}])  # fmt: skip
    for proposal, replayed in ((redis_policy(remediate=[request("restart"), request("failover", **{"with": {
            "url": "http://127.0.0.1:1/admin/failover", "destructive": True}})]), False), (unguarded, True)):  # fmt: skip
        for body in bodies:
            recording = Recording(incident("RedisDown"), body["status"])
            full, quick = compare(recording, candidates, proposal), compare(recording, candidates, proposal,
                                                                           every_path=False)  # fmt: skip
            assert quick.kinds == full.kinds
            assert bool(quick.before) is replayed and full.before  # the full one always replays
    assert any(compare(Recording(incident("RedisDown"), b["status"]), candidates, unguarded).kinds for b in bodies)


def test_unknown_steps_are_a_change_only_where_the_baseline_knew_them() -> None:
    from runbook_operator.gitops.whatif import compare

    recorded = live(incident("RedisDown"), redis_policy(), lambda s, a: (True, 1.0))
    flushing = redis_policy(remediate=[request("restart"), request("flush", url="http://127.0.0.1:1/admin/flush")])
    assert "unknown-steps" in compare(recorded, redis_policy(), flushing, assume="ok").kinds
    # the baseline already runs the unrecorded call: the proposal adds nothing unknown
    relaxed = redis_policy(remediate=[request("restart"), request("flush", url="http://127.0.0.1:1/admin/flush")],
                           limits={"maxAttempts": 3})  # fmt: skip
    assert "unknown-steps" not in compare(recorded, flushing, relaxed, assume="ok").kinds


def test_many_incidents_replay_the_same_on_worker_processes(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    """The command forks workers for many incidents (``--jobs``): the report is the same, byte for
    byte, and in the same order, as replaying them all in this process."""
    from runbook_operator.entrypoints.cli import main
    from runbook_operator.entrypoints.cli import replay as command

    _, bodies = _history(12)
    _failover_policies(tmp_path)
    incidents = _incidents(tmp_path / "incidents.yaml", bodies)
    pools: list[int] = []

    class Pool(command.ProcessPoolExecutor):  # type: ignore[name-defined,misc]
        def __init__(self, workers: int, **options: Any) -> None:
            pools.append(workers)
            super().__init__(workers, **options)

    monkeypatch.setattr(command, "PARALLEL_FROM", 4)
    monkeypatch.setattr(command, "ProcessPoolExecutor", Pool)
    argv = ["replay", "--incidents", incidents, "--baseline", str(tmp_path / "base"), "--policies",
            str(tmp_path / "pr"), "-o", "json"]  # fmt: skip
    assert main([*argv, "--jobs", "1"]) == 0
    alone = capsys.readouterr().out
    assert pools == []
    assert main([*argv, "--jobs", "2"]) == 0
    assert capsys.readouterr().out == alone and pools == [2]
    assert json.loads(alone)["summary"]["kinds"]["unapproved-destructive"] == 12  # approved then or not: none now
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--jobs", "0"])
    assert refused.value.code == 2 and "--jobs: '0' is not a whole number of at least 1" in capsys.readouterr().err


def test_the_garbage_collector_is_paused_only_while_a_command_runs() -> None:
    import gc

    from runbook_operator.entrypoints.cli.replay import paused_gc

    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one found it off: it leaves it off
    assert gc.isenabled()


def test_a_since_filter_skips_a_start_that_is_no_timestamp() -> None:
    from datetime import timedelta

    from runbook_operator.entrypoints.cli.replay import _at_or_after

    assert _at_or_after("2026-11-27T08:00:00Z", T0 - timedelta(hours=1))
    assert not _at_or_after("2026-11-27T08:00:00Z", T0 + timedelta(hours=1))
    assert not _at_or_after("yesterday", T0)


def test_a_report_links_its_incident_to_a_replay_and_its_export_replays(tmp_path: Any, capsys: Any) -> None:
    """`report --export FILE` writes the Incident as `replay --incidents` reads it; the report says
    how to replay the incident from that file and from the archive (by name)."""
    from runbook_operator.entrypoints.cli import main

    _, bodies = _history(3)
    source = _incidents(tmp_path / "incidents.yaml", [
        {**b, "metadata": {**b["metadata"], "managedFields": [{"manager": "kubectl"}]}} for b in bodies])  # fmt: skip
    export, report = tmp_path / "inc-1.yaml", tmp_path / "inc-1.md"
    assert main(["report", "inc-1", "-f", source, "-o", str(report), "--export", str(export)]) == 0
    text = report.read_text()
    section = text[text.index("## Replay against a policy change") :]
    assert "`runbook-operator replay --archive -n ns --name inc-1 --policies DIR`" in section
    assert f"`runbook-operator replay --incidents {export} --baseline MERGED_DIR --policies DIR`" in section
    exported = yaml.safe_load(export.read_text())
    (item,) = exported["items"]
    assert item["metadata"] == {"name": "inc-1", "namespace": "ns", "generation": 1}  # no managedFields
    assert item["status"] == bodies[1]["status"]

    _failover_policies(tmp_path)
    capsys.readouterr()
    argv = ["replay", "--incidents", str(export), "--baseline", str(tmp_path / "base"), "--policies",
            str(tmp_path / "pr"), "-o", "json"]  # fmt: skip
    assert main(argv) == 0
    (verdict,) = json.loads(capsys.readouterr().out)["incidents"]
    assert (verdict["name"], verdict["changes"][0]) == ("inc-1", "unapproved-destructive")
    # the same incident picked out of the whole history by name
    assert main([*argv[:2], source, *argv[3:], "--name", "inc-1", "--name", "inc-9"]) == 0
    assert [v["name"] for v in json.loads(capsys.readouterr().out)["incidents"]] == ["inc-1"]


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("status", [{"steps": "zzz"}, {"steps": [{"name": "x", "attempt": []}]}, {"startedAt": 7}])
def test_an_incident_whose_record_cannot_be_read_is_named_and_exit_2(
    tmp_path: Any, capsys: Any, monkeypatch: Any, jobs: str, status: dict[str, Any]
) -> None:
    from runbook_operator.entrypoints.cli import main
    from runbook_operator.entrypoints.cli import replay as command

    monkeypatch.setattr(command, "PARALLEL_FROM", 2)
    _, bodies = _history(3)
    bodies[1]["status"] = {**bodies[1]["status"], **status}
    (tmp_path / "p").mkdir()
    _write(tmp_path / "p" / "p.yaml", _rpol(match={"alerts": ["RedisDown"]}, verify=[check("healthy")]))
    incidents = _incidents(tmp_path / "i.yaml", bodies)
    argv = ["replay", "--incidents", incidents, "--baseline", str(tmp_path / "p"), "--policies", str(tmp_path / "p"),
            "-o", "json", "--jobs", jobs]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    if "startedAt" in status:  # not a timestamp: the replay starts from the incident's creation instead
        assert code == 0, err
    else:
        assert code == 2 and err.startswith("runbook-operator replay: cannot replay Incident ns/inc-1: "), err


def test_an_incident_archived_after_its_alert_cleared_is_replayed_as_it_opened() -> None:
    """An archived spec says ``resolved: true`` once Alertmanager said the alert cleared; the replay
    starts from the opening, so the policy's steps run (a resolved start would run none)."""
    recorded = live(incident("RedisDown"), redis_policy(), lambda s, a: (True, 1.0))
    cleared = Recording(incident("RedisDown", resolved=True), recorded.status)
    (path,) = replay(cleared, redis_policy())
    assert (path.policy, path.end) == ("redis", "Resolved") and [r.name for r in path.ran] == [
        "ping", "restart", "healthy"]  # fmt: skip


def _escalating(**extra: Any) -> list[Candidate]:
    """A RedisDown policy whose verification never passed in the recording: it escalated."""
    spec: dict[str, Any] = {"limits": {"maxAttempts": 2},
                            "escalate": {"levels": [{"name": "on-call", "notify": [request("page-on-call")]},
                                                    {"name": "team-lead", "after": "20m",
                                                     "notify": [request("page-lead")]}]}}  # fmt: skip
    return redis_policy(**(spec | extra))


def test_more_attempts_reach_people_later_and_the_replay_says_so() -> None:
    from runbook_operator.gitops.whatif import compare

    recorded = live(incident("RedisDown"), _escalating(), lambda s, a: (s != "healthy", 60.0))
    assert recorded.status.phase == Phase.ESCALATED
    (before,) = replay(recorded, _escalating())
    assert before.end == "Escalated" and [n for n, _ in before.levels] == ["on-call", "team-lead"]
    assert before.levels[1][1] >= 20 * 60  # the second level fires 20 min after the start, unresolved
    more = _escalating(limits={"maxAttempts": 4})  # the recorded failures repeat: two more rounds first
    verdict = compare(recorded, _escalating(), more)
    assert "later-escalation" in verdict.kinds and verdict.after[0].seconds > before.seconds
    assert "later-escalation" not in compare(recorded, _escalating(), _escalating(limits={"maxAttempts": 1})).kinds


def test_a_longer_escalation_delay_is_a_later_escalation_a_shorter_one_is_not() -> None:
    from runbook_operator.gitops.whatif import compare

    recorded = live(incident("RedisDown"), _escalating(), lambda s, a: (s != "healthy", 60.0))

    def lead_after(delay: str) -> list[Candidate]:
        return _escalating(escalate={"levels": [{"name": "on-call", "notify": [request("page-on-call")]},
                                                {"name": "team-lead", "after": delay,
                                                 "notify": [request("page-lead")]}]})  # fmt: skip

    later = compare(recorded, _escalating(), lead_after("2h"))
    assert later.kinds[0] == "later-escalation", later.kinds
    assert dict(later.after[0].levels)["team-lead"] >= 2 * 3600 > dict(later.before[0].levels)["team-lead"]
    assert "later-escalation" not in compare(recorded, _escalating(), lead_after("10m")).kinds
    dropped = _escalating(escalate={"levels": [{"name": "on-call", "notify": [request("page-on-call")]}]})
    assert "later-escalation" in compare(recorded, _escalating(), dropped).kinds  # the team lead never hears


def test_a_budget_in_the_proposal_says_which_incident_would_have_waited(tmp_path: Any, capsys: Any) -> None:
    """Three recorded RedisDown incidents restarted Redis within the hour; a budget of two
    remediations per hour would have held the third one's restart (and only it)."""
    from runbook_operator.entrypoints.cli import main

    candidates = redis_policy()
    bodies = []
    for n in range(3):
        recorded = live(incident("RedisDown"), candidates, lambda step, attempt: (True, 1.0))
        bodies.append({"metadata": {"name": f"redis-{n}", "namespace": "ns", "uid": f"u{n}", "generation": 1},
                       "spec": {"alert": "RedisDown"}, "status": recorded.status.to_dict()})  # fmt: skip
    incidents = _incidents(tmp_path / "incidents.yaml", bodies)
    spec = {"match": {"alerts": ["RedisDown"]}, "diagnose": [check("ping")], "remediate": [request("restart")],
            "verify": [check("healthy", retries=2)], "limits": {"maxAttempts": 2}}  # fmt: skip
    budget = {"apiVersion": API, "kind": "RemediationBudget", "metadata": {"name": "hourly", "namespace": "ns"},
              "spec": {"remediations": {"limit": 2, "window": "1h"}}}  # fmt: skip
    (tmp_path / "base").mkdir(), (tmp_path / "pr").mkdir()
    _write(tmp_path / "base" / "p.yaml", _rpol(**spec))
    _write(tmp_path / "pr" / "p.yaml", _rpol(**spec), budget)
    common = ["replay", "--incidents", incidents, "--baseline", str(tmp_path / "base"), "-n", "ns", "--policies"]

    assert main([*common, str(tmp_path / "base"), "--fail-on", "throttled"]) == 0  # no budget: nothing held
    assert "0 of 3 incident(s) would change" in capsys.readouterr().out

    assert main([*common, str(tmp_path / "pr"), "--fail-on", "throttled"]) == 1
    out, err = capsys.readouterr()
    assert "1 of 3 incident(s) would change; 1 throttled" in out and "ns/redis-2" in out
    assert err.strip() == "runbook-operator replay: --fail-on: throttled (1)"

    assert main([*common, str(tmp_path / "pr"), "--output", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    held = [i for i in document["incidents"] if "throttled" in i["changes"]]
    assert [i["name"] for i in held] == ["redis-2"]
    assert held[0]["throttled"].startswith("restart (round 1, ")
    assert "would wait Throttled: budget ns/hourly: 2 of 2 remediation(s) per 1h spent" in held[0]["throttled"]

    assert main([*common, str(tmp_path / "pr"), "--output", "markdown"]) == 0
    assert "- **ns/redis-2**: restart (round 1, " in capsys.readouterr().out

    budget["spec"] = {"remediations": {"limit": 5, "window": "1h"}}
    _write(tmp_path / "pr" / "p.yaml", _rpol(**spec), budget)
    assert main([*common, str(tmp_path / "pr"), "--fail-on", "throttled"]) == 0
