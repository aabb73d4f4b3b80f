"""Replay (issue 25): the core driven again over a recorded incident, with a simulated clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.lifecycle import StepResult, complete, decide
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Phase, Status, StepState
from runbook_operator.gitops.replay import Recording, replay
from tests.unit.builders import check, incident, policy, request

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
Script = Callable[[str, int], tuple[bool, float]]  # (step, attempt) -> (ok, seconds it ran)


def live(
    inc: Incident,
    candidates: Sequence[Candidate],
    script: Script,
    approvals: Mapping[str, tuple[str, float]] | None = None,
) -> Recording:
    """Run the core as the operator would, steps answering from ``script`` and people approving
    ``approvals`` (step -> who, seconds after the request), until it rests: the recording."""
    status, now, n = Status(), T0, 0
    for n in range(500):
        decision = decide(inc, status, candidates, now, nonce=f"live-{n}")
        status = decision.status
        if decision.run is None:
            waiting = next((r for r in status.steps if r.state == StepState.AWAITING_APPROVAL.value), None)
            if waiting is not None and waiting.approvalRequest is not None and waiting.name in (approvals or {}):
                by, after = (approvals or {})[waiting.name]
                request_ = waiting.approvalRequest
                inc = replace(
                    inc, approvals=(*inc.approvals, Approval(waiting.name, by, waiting.attempt, request_.nonce))
                )
                now = max(
                    now, datetime.fromisoformat(request_.requestedAt.replace("Z", "+00:00")) + timedelta(seconds=after)
                )
                continue
            if status.phase in (Phase.RESOLVED, Phase.ESCALATED) or decision.wake_at is None:
                break
            if status.phase == Phase.AWAITING_APPROVAL:
                break
            now = max(now, decision.wake_at)
            continue
        call = decision.run
        ok, seconds = script(call.step.name, call.attempt)
        now += timedelta(seconds=seconds)
        status, _ = complete(status, call, StepResult(ok, "ok" if ok else "boom"), now, seconds)
    return Recording(inc, status)


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


def _policy_doc(failover_approval: bool) -> dict[str, Any]:
    from tests.unit.builders import policy_body

    failover = {"name": "failover", "action": "http.request", "requiresApproval": failover_approval,
                "with": {"url": "http://127.0.0.1:1/admin/failover", "destructive": True}}  # fmt: skip
    body = policy_body("redis", match={"alerts": [HOSTILE]}, diagnose=[check("ping")], remediate=[failover],
                       verify=[check("healthy")])  # fmt: skip
    return {"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "RemediationPolicy", **body}


def test_the_command_names_a_risky_change_and_fails_ci_on_it(tmp_path: Any, capsys: Any) -> None:
    import json

    from runbook_operator.domain.parsing import parse_policy
    from runbook_operator.entrypoints.cli import main
    from tests.unit.builders import REGISTRY

    guarded = parse_policy(_policy_doc(True), REGISTRY.check)
    inc = incident(HOSTILE)
    recorded = live(inc, [guarded], lambda s, a: (True, 1.0), approvals={"failover": ("alice", 60)})  # type: ignore[list-item]
    body = {"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "Incident",
            "metadata": {"name": "redis-down-1", "namespace": "ns"}, "spec": dict(inc.spec),
            "status": recorded.status.to_dict()}  # fmt: skip
    (tmp_path / "base").mkdir(), (tmp_path / "pr").mkdir()
    incidents = _write(tmp_path / "incidents.yaml", {"apiVersion": "v1", "kind": "List", "items": [body]})
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
