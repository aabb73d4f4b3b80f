"""Action registry: lookup, parameter validation, and the built-in catalog."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import pydantic

from runbook_operator.domain.durations import parse_duration
from runbook_operator.domain.lifecycle import StepResult

P = TypeVar("P", bound=pydantic.BaseModel)


# A duration parameter written as in Flux ("5s", "1m"), held as seconds.
Duration = Annotated[
    float, pydantic.BeforeValidator(lambda v: parse_duration(v) if isinstance(v, str) else v), pydantic.Field(gt=0)
]


class Params(pydantic.BaseModel):
    """Base for parameter models: unknown keys are errors, so typos fail on apply."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


@dataclass(frozen=True)
class ActionContext:
    """What an action may know about the incident it serves (never credentials)."""

    namespace: str
    incident: str
    timeout: float


@dataclass(frozen=True)
class Action(Generic[P]):
    name: str
    params: type[P]
    run: Callable[[P, ActionContext], Awaitable[StepResult]]
    description: str
    default_timeout: float = 10.0
    destructive: bool = False


def _describe(err: pydantic.ValidationError) -> str:
    problems = []
    for e in err.errors():
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
            raise ValueError(_describe(err)) from None

    def validate(self, name: str, params: Mapping[str, Any]) -> None:
        """The domain's ParamValidator: raise ValueError naming the bad parameter."""
        self.parse(name, params)


def default_registry() -> Registry:
    from runbook_operator.actions import http

    return Registry(http.ACTIONS)
