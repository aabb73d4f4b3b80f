"""alertmanager.*: silence the incident's alert while the operator works on it (``amtool silence add``).

``alertmanager.silence`` creates a silence of bounded duration whose matchers are the alert's
name, the incident's labels and ``namespace`` = the Incident's own namespace, each an equality
matcher: an incident's text is only ever a matcher's value, never a regular expression, and
whoever may create Incidents in one namespace cannot mute another namespace's alerts. Its
comment names the Incident (and its uid), so running the step again finds the same silence
instead of making a second one; ``createdBy`` is the operator. The step's result carries the
silence (``StepResult.silence``): the operator records it in the Incident's status and expires
it when the incident resolves, escalates or is deleted (:func:`expire`), so Alertmanager pages
again as soon as people are needed.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pydantic

from runbook_operator.actions import egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Duration, Language, Params, StepResult
from runbook_operator.domain.wire import clipped, timestamp

CREATED_BY = "runbook-operator"
MAX_BODY = 4 * 1024 * 1024  # bytes of Alertmanager's list of silences we read
MAX_DURATION = 24 * 3600.0
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # Prometheus' label names; others cannot be matched
_MARK = "(uid {uid})"  # in the comment: how a silence is found again for its incident
_OWN = ("alertname", "namespace")  # matchers the operator sets itself


class SilenceParams(Params):
    url: Annotated[pydantic.AnyHttpUrl, Language.URL] = pydantic.Field(
        description="base URL of Alertmanager, e.g. http://alertmanager:9093 (the API's path is added); "
        "comes from the policy"
    )
    duration: Duration = pydantic.Field(
        3600.0,
        le=MAX_DURATION,
        description="how long the silence lasts at most, e.g. 1h (at most 24h); the operator expires it "
        "as soon as the incident resolves, escalates or is deleted",
    )
    labels: list[Annotated[str, pydantic.Field(pattern=_LABEL_NAME.pattern, max_length=100)]] | None = pydantic.Field(
        None,
        max_length=32,
        description="which of the incident's labels to match on besides alertname (default: all of them "
        "whose names Alertmanager accepts)",
    )

    @pydantic.field_validator("url")
    @classmethod
    def _no_query(cls, value: pydantic.AnyHttpUrl) -> pydantic.AnyHttpUrl:
        if value.query is not None or value.fragment is not None:
            raise ValueError("takes no query (?) or fragment (#): the API's path is added to it")
        return value


def _base(url: Any) -> str:
    return str(url).rstrip("/")


def _matchers(params: SilenceParams, ctx: ActionContext) -> dict[str, str]:
    incident = ctx.details or {}  # the incident's view (engine.reconciler's details)
    alert = str(incident.get("alert") or "")
    if not alert:
        raise ActionFailure("the incident has no alert name to silence")
    labels = {str(k): str(v) for k, v in (incident.get("labels") or {}).items()}
    wanted = params.labels if params.labels is not None else sorted(labels)
    missing = [name for name in wanted if name not in labels]
    if missing:
        raise ActionFailure(f"the incident has no label {missing[0]!r} to match on (labels: {sorted(labels)})")
    chosen = {name: labels[name] for name in wanted if _LABEL_NAME.fullmatch(name) and name not in _OWN}
    # the namespace is the Incident's own, whatever its labels say: a silence never reaches past it
    return {"alertname": alert, **chosen, "namespace": ctx.namespace}


async def _call(method: str, url: str, seconds: float, where: str, body: Any = None) -> httpx.Response:
    with egress.reaching(where, seconds):
        async with egress.client(timeout=seconds) as client:
            response = await client.request(method, url, json=body)
    if len(response.content) > MAX_BODY:
        raise ActionFailure(f"{where}: answer larger than {MAX_BODY} bytes")
    return response


def _answer(response: httpx.Response, where: str) -> Any:
    if response.status_code >= 300:
        kind = egress.content_type(response.headers)
        text = clipped(response.text, 200) if kind in ("application/json", "text/plain") else f"({kind}; not shown)"
        raise ActionFailure(f"{where}: HTTP {response.status_code}: {text}")
    try:
        return response.json()
    except ValueError:
        raise ActionFailure(f"{where}: the answer is not JSON ({egress.content_type(response.headers)})") from None


async def _existing(base: str, mark: str, seconds: float, where: str) -> dict[str, Any] | None:
    """The active silence this incident's step made before (a rerun after a restart), if any."""
    found = _answer(await _call("GET", f"{base}/api/v2/silences", seconds, where), where)
    for silence in found if isinstance(found, list) else []:
        state = (silence.get("status") or {}).get("state")
        if silence.get("createdBy") == CREATED_BY and mark in str(silence.get("comment")) and state != "expired":
            return silence  # type: ignore[no-any-return]
    return None


async def silence(params: SilenceParams, ctx: ActionContext) -> StepResult:
    base, where = _base(params.url), f"Alertmanager at {_base(params.url)}"
    matchers = _matchers(params, ctx)
    mark = _MARK.format(uid=ctx.uid)
    found = await _existing(base, mark, ctx.timeout, where)
    if found is not None:
        ident, ends = str(found.get("id")), str(found.get("endsAt"))
        return _silenced(base, ident, ends, matchers, "kept the silence made before")
    now = datetime.now(UTC)
    ends = timestamp(now + timedelta(seconds=params.duration))
    comment = (
        f"runbook-operator is remediating incident {ctx.namespace}/{ctx.incident} {mark}: "
        f"kubectl describe incident {ctx.incident} -n {ctx.namespace}. Expired when it resolves or escalates."
    )
    body = {
        "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()],
        "startsAt": timestamp(now),
        "endsAt": ends,
        "createdBy": CREATED_BY,
        "comment": comment,
    }
    answer = _answer(await _call("POST", f"{base}/api/v2/silences", ctx.timeout, where, body), where)
    ident = str(answer.get("silenceID") or "") if isinstance(answer, dict) else ""
    if not ident:
        raise ActionFailure(f"{where}: no silenceID in the answer")
    return _silenced(base, ident, ends, matchers, "silenced")


def _silenced(base: str, ident: str, ends: str, matchers: dict[str, str], how: str) -> StepResult:
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in matchers.items())
    return StepResult(
        True,
        clipped(f"{how} {{{shown}}} until {ends} (silence {ident})", 500),
        {"silenceID": ident, "endsAt": ends, "matchers": matchers},
        silence=(base, ident, ends),
    )


async def expire(url: str, ident: str, seconds: float = 10.0) -> None:
    """Expire one silence; one Alertmanager no longer knows, or already expired, is not an error.
    Raises ActionFailure when Alertmanager cannot be reached or refuses."""
    base, where = _base(url), f"Alertmanager at {_base(url)}"
    path = f"{base}/api/v2/silence/{urllib.parse.quote(ident, safe='')}"
    response = await _call("DELETE", path, seconds, where)
    if response.status_code < 300 or response.status_code == 404:
        return
    state = await _call("GET", path, seconds, where)  # expiring an expired silence is refused: say it is done
    if state.status_code == 404:
        return
    known = _answer(state, where)
    if isinstance(known, dict) and (known.get("status") or {}).get("state") == "expired":
        return
    _answer(response, where)


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "alertmanager.silence",
        SilenceParams,
        silence,
        "silence the incident's alert in Alertmanager while it is remediated; expired when it resolves, "
        "escalates or is deleted",
        10.0,
    ),
)
