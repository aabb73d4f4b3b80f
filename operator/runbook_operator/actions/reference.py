"""The action catalog as text: `runbook-operator actions` and the generated docs/actions.md."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from runbook_operator.actions.api import Action
from runbook_operator.actions.registry import Registry

HEADER = """# Action reference

Generated from the registry by `make docs` (`runbook-operator actions --markdown`);
a test fails when this page is stale. Parameters go under a step's `with:`.
Destructive actions wait for an approval unless the step sets `requiresApproval: false`
(`kubectl runbook approve INCIDENT STEP` gives one, for exactly the parameters shown);
read-only actions also run in a dry run.
"""


def _params(action: Action[Any]) -> Iterator[tuple[str, str, str, str]]:
    for name, info in action.params.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        yield info.alias or name, _type(info.annotation), default, info.description or ""


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is Literal:
        return " / ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _flags(action: Action[Any]) -> str:
    flags = ["destructive" if action.destructive else "", "read-only" if action.read_only else ""]
    return ", ".join(f for f in flags if f) or "changes state"


def text(registry: Registry) -> str:
    lines = []
    for action in registry:
        lines.append(
            f"{action.name} [{_flags(action)}] — {action.description} (default timeout {action.default_timeout:g}s)"
        )
        lines.extend(f"    {name}: {doc} ({default})" for name, _, default, doc in _params(action))
    return "\n".join(lines) + "\n"


def markdown(registry: Registry) -> str:
    out = [HEADER]
    for action in registry:
        timeout = f"default timeout {action.default_timeout:g}s"
        out.append(f"## `{action.name}`\n\n{action.description}. *{_flags(action)}*, {timeout}.\n")
        out.append("| parameter | type | default | description |\n|---|---|---|---|")
        out.extend(f"| `{n}` | `{k}` | {_cell(d)} | {_cell(doc)} |" for n, k, d, doc in _params(action))
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    """A Markdown table cell: a pipe in a regex default must not end the cell."""
    return text.replace("|", "\\|")
