"""The registry: actions by name, their parameters parsed and checked as a policy is applied.

Which actions it holds is the catalog's business (``actions.catalog``); this module
knows none of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pydantic

from runbook_operator.actions.api import Action
from runbook_operator.domain.expressions import is_template
from runbook_operator.domain.model import Traits


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

    def __iter__(self) -> Iterator[Action[Any]]:
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
