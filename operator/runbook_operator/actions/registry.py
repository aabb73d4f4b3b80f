"""Action registry: lookup, parameter validation, the built-in catalog and plug-ins.

Third parties add actions without forking: a package declares an entry point in the
group ``runbook_operator.actions`` whose object is an iterable of :class:`Action`.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Annotated, Any, Generic, Protocol, TypeVar

import pydantic

from runbook_operator.domain.durations import parse_duration
from runbook_operator.domain.expressions import is_template
from runbook_operator.domain.model import Traits
from runbook_operator.domain.results import StepResult

P = TypeVar("P", bound=pydantic.BaseModel)
T = TypeVar("T")
ENTRY_POINT_GROUP = "runbook_operator.actions"
log = logging.getLogger(__name__)


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
        description="regular expression (Python syntax) a line matches to count as an error",
    )
    max_errors: int | None = pydantic.Field(
        None, alias="maxErrors", ge=0, description="fail when more lines than this match errorPattern"
    )

    @pydantic.field_validator("error_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"invalid regular expression {value!r}: {err}") from None
        return value


class SecretRef(Params):
    """A key of a Secret in the policy's namespace; the value is read when the step runs."""

    name: str = pydantic.Field(min_length=1, max_length=253, description="Secret name")
    key: str = pydantic.Field(min_length=1, max_length=253, description="key in the Secret's data")


class Services(Protocol):
    """What the engine lends actions: the cluster and a thread pool for blocking clients."""

    async def read_secret(self, namespace: str, name: str, key: str) -> str: ...
    def api_client(self) -> Any: ...
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
    revealed: set[str] = field(default_factory=set)

    async def secret(self, ref: SecretRef) -> str:
        if self.services is None:
            raise RuntimeError("no cluster to read secrets from")
        value = await self.services.read_secret(self.namespace, ref.name, ref.key)
        if value:
            self.revealed.add(value)
        return value

    def redact(self, text: str) -> str:
        """Scrub secret values; actions that shorten text must call it before cutting."""
        for value in sorted(self.revealed, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


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
        return Traits(destructive=self.destructive or flagged, read_only=self.read_only)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every HTTP action: making one loads the CA bundle, ~30 ms of CPU each time."""
    return ssl.create_default_context()


def _describe(errors: list[Any]) -> str:
    problems = []
    for e in errors:
        where = ".".join(str(part) for part in e["loc"]) or "(params)"
        problems.append(f"{where}: {e['msg']}")
    return "; ".join(problems)


class Registry:
    def __init__(self, actions: Iterable[Action[Any]] = ()) -> None:
        self._actions: dict[str, Action[Any]] = {}
        for action in actions:
            self.register(action)

    def register(self, action: Action[Any]) -> None:
        if action.name in self._actions:
            raise ValueError(f"action {action.name!r} is registered twice")
        self._actions[action.name] = action

    def __iter__(self) -> Any:
        return iter(sorted(self._actions.values(), key=lambda a: a.name))

    def get(self, name: str) -> Action[Any]:
        try:
            return self._actions[name]
        except KeyError:
            raise ValueError(f"unknown action {name!r}; known: {', '.join(sorted(self._actions))}") from None

    def parse(self, name: str, params: Mapping[str, Any]) -> pydantic.BaseModel:
        action = self.get(name)
        try:
            model: pydantic.BaseModel = action.params.model_validate(dict(params))
            return model
        except pydantic.ValidationError as err:
            raise ValueError(_describe(err.errors())) from None

    def check(self, name: str, params: Mapping[str, Any]) -> Traits:
        """The domain's ParamValidator. Templated values are only known when the step runs,
        so errors about them wait until then; every other problem is reported now."""
        action = self.get(name)
        templated = {key for key, value in params.items() if is_template(value)}
        try:
            return action.traits(action.params.model_validate(dict(params)))
        except pydantic.ValidationError as err:
            errors = [e for e in err.errors() if not (e["loc"] and e["loc"][0] in templated)]
            if errors:
                raise ValueError(_describe(errors)) from None
            return action.traits(None)


def builtin_actions() -> list[Action[Any]]:
    from runbook_operator.actions import docker, http, kubernetes, notify, postgres, prometheus, redis

    return [*http.ACTIONS, *notify.ACTIONS, *kubernetes.ACTIONS, *docker.ACTIONS, *prometheus.ACTIONS,
            *postgres.ACTIONS, *redis.ACTIONS]  # fmt: skip


def plugin_actions() -> list[Action[Any]]:
    """Actions from installed packages' entry points; a broken plug-in is logged and skipped."""
    found: list[Action[Any]] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.extend(point.load())
        except Exception as err:  # one bad plug-in must not take the operator down
            log.error("action plug-in %s (%s) failed to load: %s", point.name, point.value, err)
    return found


def default_registry() -> Registry:
    return Registry((*builtin_actions(), *plugin_actions()))
