"""prometheus.*: the runbook's PromQL checks (``curl .../api/v1/query --data-urlencode 'query=...'``).

A check with a threshold (``op`` and ``value``) is healthy when NO series breaches it:
``ok=True`` means "nothing is over the line", ``ok=False`` lists the series that are,
with their labels and values. Without a threshold the step only checks that the query
runs and reports what it returned. NaN (e.g. an error ratio 0/0 with no traffic) is
never compared: it is reported as NaN, not as a breach.
"""

from __future__ import annotations

import json
import math
import operator
import re
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import pydantic

from runbook_operator.actions import egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Duration, Language, Params, StepResult
from runbook_operator.domain.expressions import is_template
from runbook_operator.domain.wire import clipped, printable

MAX_BODY = 1024 * 1024  # bytes of a Prometheus answer we read; a bigger one is refused
MAX_POINTS = 11_000  # Prometheus' own limit of points per series in a range query
MAX_REPORTED = 10  # series listed in the output (the count covers them all)
SERIES_TEXT = 1500  # characters of series in the output: the Incident status keeps ~2 KiB a step
MAX_IN_MESSAGE = 5  # series named in the message
_LABELS_TEXT = 300  # characters of one series' labels kept in the output
_QUOTED = 300  # characters of Prometheus' own error text quoted in a message
_TEMPLATE_BLOCK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_NO_QUERY = (
    "takes no query (?) or fragment (#): the API's path (/api/v1/query) is added to it, and either would swallow it"
)

Op = Literal[">", ">=", "<", "<=", "==", "!="]
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class _Check(Params):
    url: Annotated[pydantic.AnyHttpUrl, Language.URL] = pydantic.Field(
        description="base URL of Prometheus, e.g. http://prometheus:9090 (http or https; no query or fragment: "
        "the API's path is added to it); comes from the policy"
    )
    query: Annotated[str, Language.PROMQL] = pydantic.Field(
        min_length=1, max_length=10_000, description="PromQL expression; incident values only inside quoted strings"
    )
    op: Op | None = pydantic.Field(
        None, description="threshold comparison; a series breaches when `value <op> threshold` holds"
    )
    threshold: float | None = pydantic.Field(
        None,
        alias="value",
        allow_inf_nan=False,
        description="threshold the series are compared with (needs op); ok when no series breaches",
    )
    on_empty: Literal["ok", "fail"] = pydantic.Field(
        "ok", alias="onEmpty", description="result when the query returns no series (no data)"
    )
    timeout: Duration | None = pydantic.Field(
        None, description="bound on the query, e.g. 5s (default: the step's); also sent to Prometheus"
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _templated_url_adds_no_query(cls, data: Any) -> Any:
        """A templated url is only validated when the step runs; its literal text is known now.
        (Incident values are percent-encoded: only the policy's own text can hold ``?`` or ``#``.)"""
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and is_template(url) and re.search(r"[?#]", _TEMPLATE_BLOCK.sub("", url)):
            raise ValueError(f"url {_NO_QUERY}")
        return data

    @pydantic.field_validator("url")
    @classmethod
    def _no_query(cls, value: pydantic.AnyHttpUrl) -> pydantic.AnyHttpUrl:
        if value.query is not None or value.fragment is not None:
            raise ValueError(_NO_QUERY)
        return value

    @pydantic.model_validator(mode="after")
    def _threshold_complete(self) -> _Check:
        if (self.op is None) != (self.threshold is None):
            raise ValueError("op and value go together: give both or neither")
        return self

    def budget(self, ctx: ActionContext) -> float:
        return min(self.timeout, ctx.timeout) if self.timeout is not None else ctx.timeout

    def endpoint(self, path: str) -> str:
        return str(self.url).rstrip("/") + path


class QueryParams(_Check):
    pass


class QueryRangeParams(_Check):
    range: Duration = pydantic.Field(description="how far back the range goes from now, e.g. 15m")
    step: Duration = pydantic.Field(description="resolution of the range, e.g. 30s")
    reduce: Literal["last", "max", "min", "avg"] = pydantic.Field(
        "last", description="how a series' points become the one value compared: last, max, min or avg"
    )

    @pydantic.model_validator(mode="after")
    def _bounded_points(self) -> QueryRangeParams:
        if self.step > self.range:
            raise ValueError(f"step ({self.step:g}s) is longer than range ({self.range:g}s)")
        points = int(self.range // self.step) + 1
        if points > MAX_POINTS:
            raise ValueError(f"range/step gives {points} points a series; at most {MAX_POINTS}: use a larger step")
        return self


def _number(text: Any) -> float:
    try:
        return float(text)  # Prometheus writes "NaN", "+Inf", "-Inf" as strings too
    except (TypeError, ValueError):
        raise ActionFailure(f"unexpected sample value {_short(text)}") from None


def _short(value: Any) -> str:
    """A value from the answer, quoted in a message: its repr, at most 40 characters."""
    return clipped(repr(value), 40)


def _shown(value: float) -> float | str:
    """JSON (and so the Incident's status) has no NaN or infinity: those are written as text."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def _selector(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


def _labels_kept(labels: dict[str, str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    size = 0
    for key, value in sorted(labels.items()):
        size += len(key) + len(value)
        if size > _LABELS_TEXT:
            kept["…"] = "labels truncated"
            break
        kept[key] = value
    return kept


def _reported(series: Sequence[tuple[dict[str, str], float]]) -> list[dict[str, Any]]:
    """The first series, as many as fit in MAX_REPORTED entries and SERIES_TEXT characters."""
    reported: list[dict[str, Any]] = []
    size = 0
    for labels, value in series[:MAX_REPORTED]:
        entry = {"labels": _labels_kept(labels), "value": _shown(value)}
        size += len(str(entry))
        if size > SERIES_TEXT and reported:
            break
        reported.append(entry)
    return reported


async def _ask(params: _Check, ctx: ActionContext, path: str, form: dict[str, str]) -> Any:
    """POST a form to the HTTP API and return its ``data``; every failure is an ActionFailure.

    An answer that is not the API's JSON is never quoted, whatever its status: the step says
    its status and content type only (the url may lead somewhere that is not Prometheus)."""
    budget = params.budget(ctx)
    where = f"Prometheus at {params.url}"
    form = {**form, "timeout": f"{budget:g}"}  # seconds: Prometheus then gives up on the query too
    with egress.reaching(where, budget):
        async with (
            egress.client(timeout=budget) as client,
            client.stream("POST", params.endpoint(path), data=form) as response,
        ):
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    raise ActionFailure(
                        f"{where}: answer larger than {MAX_BODY} bytes; narrow the query (topk, sum by, ...)"
                    )
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("status") not in ("success", "error"):
        raise ActionFailure(
            f"{where}: not a Prometheus API answer (HTTP {response.status_code}, "
            f"{egress.content_type(response.headers)}; not shown)"
        )
    if doc["status"] == "error":
        kind, error = _quoted(doc.get("errorType") or "error", ctx, 40), _quoted(doc.get("error") or "no detail", ctx)
        raise ActionFailure(f"{where} refused the query (HTTP {response.status_code}, {kind}): {error}")
    return doc.get("data")


def _quoted(value: Any, ctx: ActionContext, limit: int = _QUOTED) -> str:
    """Text from an answer, for a message: secrets scrubbed, then made printable and bounded."""
    return clipped(printable(ctx.redact(str(value))), limit)


def _evaluate(
    params: _Check, series: Sequence[tuple[dict[str, str], float]], what: str, extra: dict[str, Any]
) -> StepResult:
    if not series:
        ok = params.on_empty == "ok"
        return StepResult(ok, f"{what}: no data (query returned no series)", {"breaching": 0, "total": 0, **extra})
    nan = sum(1 for _, v in series if math.isnan(v))
    numbers = [v for _, v in series if not math.isnan(v)]
    nan_note = f"; {nan} NaN, not compared" if nan else ""
    if params.op is None or params.threshold is None:
        listed = list(series)
        breaching: list[tuple[dict[str, str], float]] = []
    else:
        compare, limit = _COMPARE[params.op], params.threshold
        breaching = [(labels, v) for labels, v in series if not math.isnan(v) and compare(v, limit)]
        breaching.sort(key=lambda s: s[1], reverse=params.op in (">", ">=", "!=", "=="))
        listed = breaching
    output: dict[str, Any] = {
        "breaching": len(breaching),
        "total": len(series),
        **({"nan": nan} if nan else {}),
        **extra,
        "series": _reported(listed),
    }
    shown = ", ".join(f"{_selector(labels)} = {_shown(v)}" for labels, v in listed[:MAX_IN_MESSAGE])
    more = f" (+{len(listed) - MAX_IN_MESSAGE} more)" if len(listed) > MAX_IN_MESSAGE else ""
    if params.op is None:
        return StepResult(True, f"{what}: {len(series)} series{nan_note}: {shown}{more}", output)
    rule = f"{params.op} {params.threshold:g}"
    if breaching:
        return StepResult(
            False, f"{what}: {len(breaching)} of {len(series)} series breach {rule}: {shown}{more}{nan_note}", output
        )
    span = f"; values {min(numbers):g}..{max(numbers):g}" if numbers else ""
    return StepResult(True, f"{what}: no series breaches {rule} ({len(series)} series{span}{nan_note})", output)


def _instant_series(data: Any) -> list[tuple[dict[str, str], float]]:
    try:
        return _instant(data)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ActionFailure("malformed answer: the result is not an instant vector or a scalar") from None


def _instant(data: Any) -> list[tuple[dict[str, str], float]]:
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "vector" and isinstance(result, list):
        return [(dict(item.get("metric") or {}), _number(item["value"][1])) for item in result]
    if kind == "scalar" and isinstance(result, list):
        return [({}, _number(result[1]))]
    if kind == "matrix":
        raise ActionFailure(
            "the query returns a range vector (matrix): use prometheus.queryRange or wrap it in a function "
            "such as rate() or max_over_time()"
        )
    raise ActionFailure(f"unsupported result type {_short(kind)}: expected an instant vector or a scalar")


def _reduce(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return math.nan
    if how == "max":
        return max(numbers)
    if how == "min":
        return min(numbers)
    return sum(numbers) / len(numbers)


def _range_series(data: Any, how: str) -> tuple[list[tuple[dict[str, str], float]], int]:
    try:
        return _matrix(data, how)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ActionFailure("malformed answer: the result is not a matrix") from None


def _matrix(data: Any, how: str) -> tuple[list[tuple[dict[str, str], float]], int]:
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind != "matrix" or not isinstance(result, list):
        raise ActionFailure(f"unsupported result type {_short(kind)} for a range query: expected a matrix")
    series, points = [], 0
    for item in result:
        values = [_number(v[1]) for v in item.get("values") or []]
        if values:
            points += len(values)
            series.append((dict(item.get("metric") or {}), _reduce(values, how)))
    return series, points


async def query(params: QueryParams, ctx: ActionContext) -> StepResult:
    data = await _ask(params, ctx, "/api/v1/query", {"query": params.query})
    return _evaluate(params, _instant_series(data), f"query {params.query!r}", {})


async def query_range(params: QueryRangeParams, ctx: ActionContext) -> StepResult:
    end = time.time()
    form = {
        "query": params.query,
        "start": f"{end - params.range:.3f}",
        "end": f"{end:.3f}",
        "step": f"{params.step:g}",
    }
    data = await _ask(params, ctx, "/api/v1/query_range", form)
    series, points = _range_series(data, params.reduce)
    what = f"query {params.query!r} over {params.range:g}s ({params.reduce})"
    return _evaluate(params, series, what, {"points": points})


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "prometheus.query",
        QueryParams,
        query,
        "run an instant PromQL query; with op/value, ok when no series breaches the threshold",
        15.0,
        read_only=True,
    ),
    Action(
        "prometheus.queryRange",
        QueryRangeParams,
        query_range,
        "run a PromQL range query and compare each series' last/max/min/avg with a threshold; ok when none breaches",
        30.0,
        read_only=True,
    ),
)
