"""Properties of the state machine under random policies, outcomes, approvals, crashes and time."""

import itertools
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from itertools import cycle, islice
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.lifecycle import StepResult, complete, decide
from runbook_operator.domain.status import Phase, Status
from tests.unit.builders import incident, policy
from tests.unit.test_lifecycle import T0


@st.composite
def steps(draw: Any, prefix: str, allow_destructive: bool = True) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        destructive = allow_destructive and draw(st.booleans())
        action = "http.request" if destructive or draw(st.booleans()) else "http.check"
        params: dict[str, Any] = {"url": "http://svc.local/x"}
        if destructive:
            params["destructive"] = True
        step: dict[str, Any] = {"name": f"{prefix}{i}", "action": action, "with": params}
        if draw(st.booleans()):
            step["continueOnFailure"] = True
        if draw(st.integers(0, 4)) == 0:
            step["requiresApproval"] = draw(st.booleans())
        out.append(step)
    return out


@st.composite
def policies(draw: Any) -> Any:
    spec: dict[str, Any] = {
        "diagnose": draw(steps("d", allow_destructive=False)),
        "remediate": draw(steps("r")),
        "verify": draw(steps("v", allow_destructive=False)),
        "limits": {"maxAttempts": draw(st.integers(1, 4)), "approvalTimeout": "20m"},
        "settle": draw(st.sampled_from(["0s", "5s", "1m"])),
        "dryRun": draw(st.integers(0, 5)) == 0,
    }
    if draw(st.booleans()):
        spec["escalate"] = {
            "levels": [
                {
                    "name": "oncall",
                    "notify": [{"name": "n1", "action": "notify.webhook", "with": {"url": "http://hook.local/"}}],
                },
                {
                    "name": "lead",
                    "after": "10m",
                    "notify": [{"name": "n2", "action": "notify.webhook", "with": {"url": "http://hook.local/"}}],
                },
            ],
            "updateEvery": "15m",
        }
    return policy("p", **spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candidate=policies(), data=st.data())
def test_the_machine_is_safe_under_any_outcomes_crashes_and_approvals(candidate: Any, data: Any) -> None:
    inc = incident(severity=data.draw(st.sampled_from(["Critical", "High", "Medium", "Low"])))
    status, now = Status(), T0
    executed: Counter[tuple[str, str, int]] = Counter()
    nonces = itertools.count()
    destructive = {s.name for s in candidate.remediate if s.destructive}
    resolved_at: Status | None = None
    for _ in range(400):
        decision = decide(inc, status, [candidate], now, nonce=f"n{next(nonces)}")
        status = decision.status
        assert status.attempts <= candidate.max_attempts
        if resolved_at is not None:
            assert status == resolved_at and decision.run is None and decision.events == (), "Resolved must be terminal"
        if status.phase == Phase.RESOLVED.value:
            resolved_at = status
        if decision.run is not None:
            call = decision.run
            executed[(call.step.stage.value, call.step.name, call.attempt)] += 1
            what = data.draw(st.sampled_from(["ok", "fail", "crash"]))
            if what != "crash":  # a crash leaves the step Running; the next decide is a new operator
                status, _ = complete(status, call, StepResult(what == "ok", what), now)
            continue
        if data.draw(st.integers(0, 3)) == 0:  # someone approves whatever waits
            waiting = [s for s in status.steps if s.state == "AwaitingApproval" and s.approvalRequest]
            if waiting:
                step, request = waiting[0], waiting[0].approvalRequest
                assert request is not None
                inc = replace(inc, approvals=(*inc.approvals, Approval(step.name, "sre", step.attempt, request.nonce)))
                continue
        if decision.wake_at is None:
            break
        now = max(now, decision.wake_at)
        if now > T0 + timedelta(hours=3):
            break
    for (stage, name, attempt), count in executed.items():
        if stage == "Remediate" and name in destructive:
            assert count == 1, f"destructive step {name} ran {count} times in attempt {attempt}"
        if stage == "Escalate":
            assert count == 1, f"notification {name} sent {count} times for level/update {attempt}"


@settings(max_examples=200, deadline=None)
@given(candidate=policies(), outcomes=st.lists(st.booleans(), min_size=1, max_size=60))
def test_it_always_comes_to_rest(candidate: Any, outcomes: list[bool]) -> None:
    """Without a wake-up time or a change to the incident, a decision is idempotent: no endless loop."""
    inc, status, nonces = incident(), Status(), itertools.count()
    for ok in islice(cycle(outcomes), 500):
        decision = decide(inc, status, [candidate], T0 + timedelta(hours=1), nonce=f"n{next(nonces)}")
        status = decision.status
        if decision.run is None:
            again = decide(inc, status, [candidate], T0 + timedelta(hours=1), nonce="another")
            assert again.run is None and again.status == status and again.events == ()
            waiting = [s for s in status.steps if s.state == "AwaitingApproval" and s.approvalRequest]
            if not waiting:
                return
            step, request = waiting[0], waiting[0].approvalRequest
            assert request is not None  # approve what waits, then it must move on
            inc = replace(inc, approvals=(*inc.approvals, Approval(step.name, "sre", step.attempt, request.nonce)))
            continue
        status, _ = complete(status, decision.run, StepResult(ok, "x"), T0 + timedelta(hours=1))
    raise AssertionError("still running steps after every outcome was used")
