"""The action catalog as text: `runbook-operator actions` and the generated docs/actions.md."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from runbook_operator.actions.api import Action, Language
from runbook_operator.actions.registry import Registry

HEADER = """# Action reference

Generated from the registry by `make docs` (`runbook-operator actions --markdown`);
a test fails when this page is stale. Parameters go under a step's `with:`.
Destructive actions wait for an approval unless the step sets `requiresApproval: false`
(`kubectl runbook approve INCIDENT STEP` gives one, for exactly the parameters shown);
read-only actions also run in a dry run. The *templates* column says what a template may
do with incident data in that parameter: nothing where it decides a destination
(`literal`), and elsewhere the values are escaped for the parameter's language, so an
alert label can never change a query's or a pattern's shape (docs/security.md).
Another package can add actions:
[Write your own action](#write-your-own-action), at the end of this page.
"""


GUIDE = """## Write your own action

A package adds actions without forking the operator: it names an iterable of
`Action` in the entry-point group `runbook_operator.actions`, and once it is installed
in the operator's Python environment the operator, `runbook-operator actions` and
`runbook-operator validate` know its actions. Everything an action is made of comes
from one import, `runbook_operator.actions`:

- `Params`: the base of a parameter model (pydantic). Unknown keys are errors and every
  field is checked when a policy is applied, so a typo shows in the policy's `Ready`
  condition (and in `runbook-operator validate`), not in an incident. Give each field a
  `description`: it is the documentation. `Duration` is a
  field type written as `5s` or `1m` and held as seconds; `SecretRef` is a `{name, key}`
  of a Secret in the policy's namespace (always literal).
- `Language`: say what a text parameter is, so incident values substituted into it are
  escaped for it: `Annotated[str, Language.LITERAL]` for anything that decides where the
  action connects or what it authenticates as (hosts, ports, endpoints: templates are
  refused on apply), `Language.PROMQL`, `Language.GLOB` (Redis patterns),
  `Language.NAME` (object names, label values and selectors) and `Language.URL`. A
  parameter without one is free text and gets the values as they are.
- `run(params, ctx)`: a coroutine returning a `StepResult(ok, message, output)`. The
  message is what the Incident's status, its Events and the notifications show; `output`
  is a small JSON mapping that later steps' `when` and `with` can read.
- When the action cannot do its job, it raises `ActionFailure(message, output)` (or
  returns `StepResult(False, ...)`). Any other exception fails the step as
  `<action> failed: <type>: <error>` and is logged with its traceback: a bug, not a
  finding. The step's timeout (the policy's `timeout`, else the action's default)
  cancels `run` and fails the step as `<action> timed out after <t>s`.
- `ctx` says which incident the step serves (`ctx.namespace`, `ctx.incident`,
  `ctx.timeout`). `await ctx.secret(ref, where, "the token")` reads a Secret's key; if it
  cannot, the step fails saying `<where>: cannot read the token from Secret '<name>' key
  '<key>': <why>`. Every value read so is scrubbed from what the step returns, the
  failure's message included. Blocking work belongs in a thread
  (`asyncio.to_thread`, or `ctx.services.run_blocking` inside the operator), never on the
  event loop every incident shares.
- `Action(name, params, run, description, default_timeout, destructive=..., read_only=...)`:
  a destructive action waits for an approval unless the step opts out; a read-only one
  also runs in a dry run.

A complete plug-in is a directory with two files:

`pyproject.toml`:

```toml
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-actions"
version = "0.1.0"
dependencies = ["runbook-operator"]

[project.entry-points."runbook_operator.actions"]
acme = "acme_actions:ACTIONS"

[tool.setuptools]
py-modules = ["acme_actions"]
```

`acme_actions.py`:

```python
\"\"\"acme.diskFree: how much of a filesystem is free, against a minimum.\"\"\"

import asyncio
import shutil
from typing import Any

import pydantic

from runbook_operator.actions import Action, ActionContext, ActionFailure, Params, StepResult


class DiskFreeParams(Params):
    path: str = pydantic.Field(min_length=1, description="a path on the filesystem, e.g. /var/lib/postgresql")
    min_free: float = pydantic.Field(
        0.1, alias="minFree", gt=0, lt=1, description="fail when less than this share of the space is free"
    )


async def disk_free(params: DiskFreeParams, ctx: ActionContext) -> StepResult:
    try:
        usage = await asyncio.to_thread(shutil.disk_usage, params.path)  # a system call: off the event loop
    except OSError as err:
        raise ActionFailure(f"disk {params.path}: {err.strerror}") from None
    free = round(usage.free / usage.total, 3)
    output = {"free": free, "freeBytes": usage.free, "totalBytes": usage.total}
    if free < params.min_free:
        return StepResult(False, f"disk {params.path}: {free:.1%} free, less than {params.min_free:.0%}", output)
    return StepResult(True, f"disk {params.path}: {free:.1%} free", output)


ACTIONS: list[Action[Any]] = [
    Action(
        "acme.diskFree",
        DiskFreeParams,
        disk_free,
        "the share of a filesystem that is free; fails below minFree",
        default_timeout=5.0,
        read_only=True,
    ),
]
```

Install it where the operator runs (`pip install ./acme-actions` in its environment; for
the image, a derived image that installs the package into `/opt/venv`), and a policy's
step can use it:

```yaml
    - name: disk
      action: acme.diskFree
      with: {path: /var/lib/postgresql, minFree: 0.2}
```

`runbook-operator actions` lists it with its parameters, and `runbook-operator validate`
checks the steps that use it. A plug-in that fails to import is logged and skipped; the
operator runs on without it. An action named like a built-in one is refused.
`tests/unit/test_action_plugin.py` installs this very example from this page and runs it.
"""


# What a template in a parameter may do with incident data, by the parameter's language.
TEMPLATES = {
    Language.TEXT: "as is",
    Language.LITERAL: "no: literal",
    Language.URL: "path only, percent-encoded",
    Language.PROMQL: "in quoted strings, escaped",
    Language.GLOB: "escaped: matches itself",
    Language.NAME: "name characters only",
}


def _params(action: Action[Any]) -> Iterator[tuple[str, str, str, str, str]]:
    kinds = action.traits(None).languages
    for name, info in action.params.model_fields.items():
        key = info.alias or name
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        yield key, _type(info.annotation), default, TEMPLATES[kinds.get(key, Language.TEXT)], info.description or ""


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
        lines.extend(f"    {name}: {doc} ({default})" for name, _, default, _, doc in _params(action))
    return "\n".join(lines) + "\n"


def markdown(registry: Registry) -> str:
    out = [HEADER]
    for action in registry:
        timeout = f"default timeout {action.default_timeout:g}s"
        out.append(f"## `{action.name}`\n\n{action.description}. *{_flags(action)}*, {timeout}.\n")
        out.append("| parameter | type | default | templates | description |\n|---|---|---|---|---|")
        out.extend(f"| `{n}` | `{k}` | {_cell(d)} | {t} | {_cell(doc)} |" for n, k, d, t, doc in _params(action))
        out.append("")
    out.append(GUIDE)
    return "\n".join(out)


def _cell(text: str) -> str:
    """A Markdown table cell: a pipe in a regex default must not end the cell."""
    return text.replace("|", "\\|")
