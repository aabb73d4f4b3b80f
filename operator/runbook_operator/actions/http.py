"""http.*: the runbook's ``curl -f`` health checks and JSON calls to admin APIs."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import httpx
import pydantic

from runbook_operator.actions import api, egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Params, StepResult
from runbook_operator.actions.egress import EgressRefused

MAX_BODY = 64 * 1024  # bytes of a response we read; the rest is ignored
MAX_REDIRECTS = 3
_EXCERPT = 200


class _Target(Params):
    url: Annotated[pydantic.AnyHttpUrl, api.Language.URL] = pydantic.Field(
        description="absolute http(s) URL; comes from the policy"
    )
    expect_status: int = pydantic.Field(200, alias="expectStatus", ge=100, le=599, description="expected HTTP status")
    timeout: api.Duration | None = pydantic.Field(
        None, description="bound on the request, e.g. 5s (default: the step's)"
    )

    def budget(self, ctx: ActionContext) -> float:
        return min(self.timeout, ctx.timeout) if self.timeout is not None else ctx.timeout


class CheckParams(_Target):
    max_latency: float | None = pydantic.Field(
        None, alias="maxLatencySeconds", gt=0, description="fail when the response takes longer"
    )
    body_contains: str | None = pydantic.Field(
        None, alias="bodyContains", description="fail unless the body contains it"
    )


class RequestParams(_Target):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = pydantic.Field("POST", description="HTTP method")
    json_body: Any = pydantic.Field(None, alias="json", description="JSON body to send")
    headers: dict[str, str] = pydantic.Field(default_factory=dict, description="extra request headers")
    headers_from_secrets: dict[str, api.SecretRef] = pydantic.Field(
        default_factory=dict,
        alias="headersFromSecrets",
        description="headers whose values come from Secrets, e.g. Authorization: {name: admin-api, key: token}",
    )
    destructive: bool = pydantic.Field(False, description="this call destroys or fails over: it then needs approval")


async def _send(
    method: str, params: _Target, ctx: ActionContext, secret_headers: frozenset[str] = frozenset(), **kwargs: Any
) -> tuple[httpx.Response, bytes, float]:
    """The response, its body (up to MAX_BODY) and how long it took; no answer is an ActionFailure.

    Redirects are followed within the URL's origin; one to another origin only when the
    request carries no header from a Secret (httpx would keep any but Authorization)."""
    timeout = params.budget(ctx)
    where = f"{method} {params.url}"
    origin = _origin(httpx.URL(str(params.url)))

    async def keep_secrets_home(request: httpx.Request) -> None:
        if secret_headers and _origin(request.url) != origin:
            raise ActionFailure(
                f"{where}: redirected to {_origin(request.url)}, another origin: not followed, "
                f"it would carry {', '.join(sorted(secret_headers))} from a Secret there"
            )

    try:
        async with egress.client(
            timeout=timeout,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            event_hooks={"request": [keep_secrets_home]},
        ) as client:
            started = time.perf_counter()
            async with client.stream(method, str(params.url), **kwargs) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_BODY:
                        body = body[:MAX_BODY]
                        break
            return response, body, time.perf_counter() - started
    except EgressRefused as err:
        raise ActionFailure(f"{where}: {err}") from None
    except httpx.TimeoutException:
        raise ActionFailure(f"{where}: no answer within {timeout:g}s") from None
    except httpx.TooManyRedirects:
        raise ActionFailure(f"{where}: more than {MAX_REDIRECTS} redirects") from None
    except httpx.HTTPError as err:
        raise ActionFailure(f"{where}: {type(err).__name__}: {err or 'connection failed'}") from None


def _origin(url: httpx.URL) -> str:
    """scheme://host:port, the port written out, so http://h and http://h:80 are one origin."""
    port = url.port or (443 if url.scheme == "https" else 80)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}:{port}"


def _excerpt(body: bytes, ctx: ActionContext) -> str:
    """The start of a body, with secrets scrubbed first so a cut cannot leave part of one.
    http.request shows it for a 2xx answer or a JSON one (an admin API's error), never for
    another kind of error page."""
    return ctx.redact(body.decode("utf-8", errors="replace"))[:_EXCERPT]


async def check(params: CheckParams, ctx: ActionContext) -> StepResult:
    response, body, elapsed = await _send("GET", params, ctx)
    output = {"status": response.status_code, "latencySeconds": round(elapsed, 3)}
    where = f"GET {params.url}"
    if response.status_code != params.expect_status:
        return StepResult(False, f"{where}: status {response.status_code}, expected {params.expect_status}", output)
    if params.max_latency is not None and elapsed > params.max_latency:
        return StepResult(False, f"{where}: took {elapsed:.3f}s, limit {params.max_latency:g}s", output)
    if params.body_contains is not None and params.body_contains not in body.decode("utf-8", errors="replace"):
        return StepResult(False, f"{where}: body does not contain {params.body_contains!r}", output)
    return StepResult(True, f"{where}: status {response.status_code} in {elapsed:.3f}s", output)


async def request(params: RequestParams, ctx: ActionContext) -> StepResult:
    headers = dict(params.headers)
    for header, ref in params.headers_from_secrets.items():
        headers[header] = await ctx.secret(ref, f"header {header}")
    kwargs: dict[str, Any] = {"headers": headers}
    if params.json_body is not None:
        kwargs["json"] = params.json_body
    response, body, _ = await _send(params.method, params, ctx, frozenset(params.headers_from_secrets), **kwargs)
    output: dict[str, Any] = {"status": response.status_code}
    if response.is_success or egress.is_json(response.headers):
        output["body"] = _excerpt(body, ctx)
    else:  # an error page of some other kind (HTML, text from a proxy or a metadata server): not quoted
        output["contentType"] = egress.content_type(response.headers)
    where = f"{params.method} {params.url}"
    if response.status_code != params.expect_status:
        return StepResult(False, f"{where}: status {response.status_code}, expected {params.expect_status}", output)
    return StepResult(True, f"{where}: status {response.status_code}", output)


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "http.check",
        CheckParams,
        check,
        "GET a URL and check its status, latency and body (curl -f)",
        10.0,
        read_only=True,
    ),
    Action("http.request", RequestParams, request, "send a JSON request to a service admin API", 30.0),
)
