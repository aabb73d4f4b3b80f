"""The action plug-in API: everything an action — built-in or from another package — is made of.

An action is a dotted name, a :class:`Params` model (checked when a policy is applied),
a coroutine ``run(params, ctx)`` returning a :class:`StepResult`, a default timeout and
its traits. ``run`` reports an expected failure by raising :class:`ActionFailure` (or by
returning ``StepResult(False, ...)``); the executor turns it, and any other exception or
a timeout, into the step's failed result. ``runbook_operator.actions`` re-exports this
module; the catalog that gathers the families lives in ``actions.catalog``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import typing
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Protocol, TypeVar

import pydantic
import re2

from runbook_operator.domain.durations import parse_duration
from runbook_operator.domain.model import Traits
from runbook_operator.domain.results import StepResult
from runbook_operator.domain.substitution import Language

__all__ = [
    "CONSENT_ANNOTATION",
    "Action",
    "ActionContext",
    "ActionFailure",
    "Duration",
    "ErrorScan",
    "Language",
    "Params",
    "SecretRef",
    "Services",
    "StepResult",
    "tls_context",
]

P = TypeVar("P", bound=pydantic.BaseModel)
T = TypeVar("T")

# A duration parameter written as in Flux ("5s", "1m"), held as seconds.
Duration = Annotated[
    float, pydantic.BeforeValidator(lambda v: parse_duration(v) if isinstance(v, str) else v), pydantic.Field(gt=0)
]


class Params(pydantic.BaseModel):
    """Base for parameter models: unknown keys are errors, so typos fail on apply."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ErrorScan(Params):
    """Parameters of the actions that count error lines in logs (docker.logs, kubernetes.podLogs)."""

    error_pattern: str = pydantic.Field(
        r"(?i)error|exception|fatal",
        alias="errorPattern",
        min_length=1,
        max_length=500,
        description="regular expression (RE2 syntax: Python's without backreferences or lookaround) "
        "a line matches to count as an error",
    )
    max_errors: int | None = pydantic.Field(
        None, alias="maxErrors", ge=0, description="fail when more lines than this match errorPattern"
    )

    @pydantic.field_validator("error_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            _linear(value)
        except re2.error as err:
            reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else err
            raise ValueError(
                f"invalid regular expression {value!r}: {reason} (errorPattern runs on RE2, in time linear in the "
                "log's length: backreferences, lookahead/lookbehind and \\Z are not supported)"
            ) from None
        return value

    async def scan(self, text: str, ctx: ActionContext) -> tuple[list[str], list[str]]:
        """(lines, matching lines) of a log, in a worker thread: a MiB of log is split and scanned in
        tens of milliseconds, and that must not hold the event loop every other incident shares."""

        def split() -> tuple[list[str], list[str]]:
            lines = text.splitlines()
            search = _linear(self.error_pattern).search
            return lines, [line for line in lines if search(line)]

        if ctx.services is not None:
            return await ctx.services.run_blocking(split)
        return await asyncio.to_thread(split)


_QUIET = re2.Options()
_QUIET.log_errors = False  # the validator reports the problem; RE2 would also print it to stderr


@functools.lru_cache(maxsize=256)
def _linear(pattern: str) -> re2._Regexp:
    """A policy's regex on RE2: no backtracking, so no pattern makes a long line take quadratic time."""
    return re2.compile(pattern, _QUIET)


# On a Secret: the policies that may read it, comma-separated, or "*". Only someone who may
# write the Secret can set it, so creating a RemediationPolicy does not give its values away.
CONSENT_ANNOTATION = "remediation.ishchat.io/policies"


class SecretRef(Params):
    """A key of a Secret in the policy's namespace; the value is read when the step runs,
    if the Secret's ``remediation.ishchat.io/policies`` annotation names the policy."""

    name: str = pydantic.Field(min_length=1, max_length=253, description="Secret name")
    key: str = pydantic.Field(min_length=1, max_length=253, description="key in the Secret's data")


class ActionFailure(Exception):
    """An expected failure, phrased for the user: the step fails with this message.

    ``output`` is what the action saw before it failed (counts, names); it is recorded
    with the message, as a returned ``StepResult(False, message, output)`` would be.
    """

    def __init__(self, message: str, output: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.output: Mapping[str, Any] = dict(output or {})


class Services(Protocol):
    """What the engine lends actions: the cluster and a thread pool for blocking clients."""

    async def read_secret(self, namespace: str, name: str, key: str, policy: str | None) -> str:
        """The value, if the Secret consents to ``policy`` (:data:`CONSENT_ANNOTATION`)."""
        ...

    async def rest(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        text: bool = False,
        request_timeout: float | None = None,
    ) -> Any:
        """One Kubernetes API request (``path``'s ``{placeholders}`` from ``params``) as the operator:
        the JSON answer, or with ``text`` the answer as text; a non-2xx answer raises the client's
        ``ApiException``."""
        ...

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T: ...


@dataclass(frozen=True)
class ActionContext:
    """What an action may know about the incident it serves.

    Credentials come only through :meth:`secret`, which remembers every value it
    hands out so the executor can scrub them from the result (status, Events, logs).
    """

    namespace: str
    incident: str
    timeout: float
    details: Mapping[str, Any] | None = None  # the incident view, phase and findings, for notifications
    services: Services | None = None
    policy: str | None = None  # the RemediationPolicy the step belongs to: a Secret must name it to be read
    uid: str = ""  # the Incident's metadata.uid: stable for its life, e.g. a paging service's dedup key
    # the incident's conversations so far, by the key a step returned (StepResult.conversation)
    conversations: Mapping[str, str] = field(default_factory=dict)
    revealed: set[str] = field(default_factory=set)

    async def secret(self, ref: SecretRef, where: str, what: str | None = None) -> str:
        """The value of a Secret's key. When it cannot be read (no such Secret or key, no
        cluster, the Secret does not name the policy) or holds a control character, the step
        fails with :class:`ActionFailure`:
        ``<where>: cannot read <what> from Secret '<name>' key '<key>': <why>``, or
        ``<where>: <why>`` when ``what`` is not given."""
        cannot = "" if what is None else f"cannot read {what} from Secret {ref.name!r} key {ref.key!r}: "
        try:
            if self.services is None:
                raise RuntimeError("no cluster to read secrets from")
            value = await self.services.read_secret(self.namespace, ref.name, ref.key, self.policy)
        except Exception as err:  # a missing Secret or key is the policy's problem, not a crash
            raise ActionFailure(f"{where}: {cannot}{err}") from None
        if value:
            self.revealed.add(value)
        if any(unicodedata.category(c) == "Cc" for c in value):
            # a client library would refuse it and quote it escaped, past an exact-match scrub
            raise ActionFailure(
                f"{where}: {cannot or f'Secret {ref.name!r} key {ref.key!r}: '}the value contains a control "
                "character (often the trailing newline `kubectl create secret --from-file` keeps): refused; "
                "store the value without it"
            )
        return value

    def redact(self, text: str) -> str:
        """Scrub secret values, as written and as quoted (repr, JSON, trimmed); actions that
        shorten text must call it before cutting."""
        forms = {form for value in self.revealed for form in _quoted_forms(value)}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text


@functools.lru_cache(maxsize=256)
def _quoted_forms(value: str) -> frozenset[str]:
    """The ways a value shows up in an error message or a document: as it is, trimmed, and
    escaped as Python's repr (of the text or of its bytes, as HTTP libraries quote headers)
    and JSON do. ``'tok\\n'`` in an error is ``tok`` plus a newline, quoted."""
    forms = set()
    for text in {value, value.strip(), value.rstrip(), value.lstrip()}:
        if text:
            forms |= {
                text,
                repr(text)[1:-1],
                repr(text.encode("utf-8", "surrogatepass"))[2:-1],
                json.dumps(text)[1:-1],
                json.dumps(text, ensure_ascii=False)[1:-1],
            }
    return frozenset(forms)


@dataclass(frozen=True)
class Action(Generic[P]):
    name: str
    params: type[P]
    run: Callable[[P, ActionContext], Awaitable[StepResult]]
    description: str
    default_timeout: float = 10.0
    destructive: bool = False  # needs approval unless the step opts out
    read_only: bool = False  # changes nothing: runs even in a dry run

    def traits(self, params: pydantic.BaseModel | None) -> Traits:
        """A parameter model with a ``destructive`` field lets the policy mark one call destructive."""
        flagged = bool(getattr(params, "destructive", False))
        return Traits(
            destructive=self.destructive or flagged, read_only=self.read_only, languages=languages(self.params)
        )


@functools.cache
def languages(model: type[pydantic.BaseModel]) -> Mapping[str, Language]:
    """Each parameter's language, by the key a policy writes: the :class:`Language` in its
    annotation (``Annotated[str, Language.PROMQL]``); a Secret reference is always literal."""
    found = {}
    for name, info in model.model_fields.items():
        language = next((m for m in info.metadata if isinstance(m, Language)), None) or _language(info.annotation)
        if language is not Language.TEXT:
            found[info.alias or name] = language
    return found


def _language(annotation: Any) -> Language:
    if isinstance(annotation, type) and issubclass(annotation, SecretRef):
        return Language.LITERAL
    if typing.get_origin(annotation) is Annotated:
        marks = [m for m in typing.get_args(annotation)[1:] if isinstance(m, Language)]
        if marks:
            return marks[0]
    for inner in typing.get_args(annotation):
        language = _language(inner)
        if language is not Language.TEXT:
            return language
    return Language.TEXT


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every HTTP action: making one loads the CA bundle, ~30 ms of CPU each time."""
    return ssl.create_default_context()
