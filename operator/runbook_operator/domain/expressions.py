"""`when` conditions (CEL) and `with` templates (sandboxed Jinja), checked on apply.

Both see only four roots: ``incident`` (its spec, name and effective severity),
``steps`` (results of earlier steps by name), ``findings`` and ``announcement`` (the status
change an announcement step announces: phase, number, at, reason, message). Incident text is
data: it is substituted into the policy's templates, never parsed as one, and each
value is escaped for the language of the parameter it fills (``substitution``):
destinations take no template at all; in URLs a value is percent-encoded, may only
fill the path and may not make a ``.`` or ``..`` segment of it (which would move the
request elsewhere); in PromQL it stays inside its quoted string; in a Redis glob it
matches only itself; in a name or selector it may only be a name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import cel
import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runbook_operator.domain import substitution
from runbook_operator.domain.sandbox import BudgetEnvironment, check_budget, check_when
from runbook_operator.domain.substitution import Language

ROOTS = frozenset({"incident", "steps", "findings", "announcement"})
_LITERAL_ORIGIN = re.compile(r"^https?://[^/{}]+/")


def _env(finalize: Any = None) -> ImmutableSandboxedEnvironment:
    return BudgetEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, finalize=finalize)


_TEXT = _env()
_ENVS = {
    Language.TEXT: _TEXT,
    Language.LITERAL: _TEXT,  # never a template: refused when the policy is applied
    Language.URL: _env(finalize=lambda value: quote(str(value), safe="")),
    Language.PROMQL: _env(finalize=substitution.marked),
    Language.GLOB: _env(finalize=substitution.glob_value),
    Language.NAME: _env(finalize=substitution.name_value),
}


@functools.lru_cache(maxsize=512)
def _template(language: Language, source: str) -> jinja2.Template:
    """A policy's template, compiled once (it renders with a fresh budget each time)."""
    return _ENVS[language].from_string(source)


def _roots_problem(names: set[str]) -> str | None:
    unknown = sorted(names - ROOTS)
    return f"unknown root {unknown[0]!r} (known: {', '.join(sorted(ROOTS))})" if unknown else None


# ``steps`` followed by a literal name: ``steps.ping`` or ``steps["ping-ok"]``; anything else
# (``size(steps)``, ``"x" in steps``, ``steps.exists(...)``) uses the map whole
_STEP_REFERENCE = re.compile(
    r"(?<![\w.])steps\b"
    r"(?:\s*\.\s*([A-Za-z_]\w*)(?!\w|\s*\()"  # .name, not .macro(
    r"""|\s*\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])?"""  # ["name"] or ['name']
)


def _named_steps(source: str) -> frozenset[str] | None:
    """The step names ``source`` reads, if it reads ``steps`` only by literal names; else None.

    A `when` is evaluated with only those steps' results: converting every earlier step's
    result into CEL values was most of its cost. Conservative: a ``steps`` the pattern does not
    understand (a macro, ``size``, ``in``, a computed key) means every step is passed.
    """
    names: set[str] = set()
    for found in _STEP_REFERENCE.finditer(source):
        name = found.group(1) or found.group(2) or found.group(3)
        if name is None:
            return None
        names.add(name)
    return frozenset(names)


class When:
    """A compiled ``when`` expression."""

    def __init__(self, source: str) -> None:
        check_when(source)
        try:
            self._program = cel.compile(source)
        except ValueError as err:
            raise ValueError(f"does not compile: {str(err).splitlines()[0]}") from None
        self._roots = frozenset(self._program.variables())
        problem = _roots_problem(set(self._roots))
        if problem:
            raise ValueError(problem)
        self._steps = _named_steps(source) if "steps" in self._roots else None
        self.source = source

    def __eq__(self, other: object) -> bool:
        return isinstance(other, When) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"When({self.source!r})"

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True or False; any evaluation problem raises ValueError with the reason."""
        scope = {k: v for k, v in context.items() if k in self._roots}
        if self._steps is not None and "steps" in scope:
            every = scope["steps"]
            scope["steps"] = {name: every[name] for name in self._steps if name in every}
        try:
            result = self._program.execute(scope)
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise ValueError(f"when {self.source!r} could not be evaluated: {type(err).__name__}: {err}") from None
        if not isinstance(result, bool):
            raise ValueError(f"when {self.source!r} gave {result!r}, not true or false")
        return result


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


Languages = Mapping[str, Language]  # top-level parameter -> its language; unnamed ones are text


def check_templates(params: Mapping[str, Any], languages: Languages | None = None, path: str = "") -> None:
    """Raise ValueError naming the first template that does not parse, names an unknown
    root, or sits where the parameter's language does not allow incident data."""
    for key, value in params.items():
        where = f"{path}{key}"
        language = (languages or {}).get(key, Language.TEXT)  # nested keys are passed no languages: text
        if language is Language.LITERAL and _holds_template(value):
            raise ValueError(
                f"{where}: must be literal in the policy: it decides where the step connects (and where its "
                "credentials go), so incident data may not choose it; write the value, or map it with --host-alias"
            )
        if isinstance(value, Mapping):
            check_templates(value, None, f"{where}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    check_templates(item, None, f"{where}[{i}].")
                elif is_template(item):
                    _check_one(item, f"{where}[{i}]", language)
        elif is_template(value):
            _check_one(value, where, language)


def _holds_template(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_holds_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_template(v) for v in value)
    return is_template(value)


def _check_one(text: str, where: str, language: Language) -> None:
    try:
        parsed = _TEXT.parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{where}: template does not parse: {err.message}") from None
    check_budget(text, where)
    problem = _roots_problem(meta.find_undeclared_variables(parsed))
    if problem:
        raise ValueError(f"{where}: {problem}")
    if language is Language.URL and not _LITERAL_ORIGIN.match(text.split("{", 1)[0]):
        raise ValueError(f"{where}: templates may only fill the URL path; scheme and host must be literal")
    if language is Language.PROMQL:
        try:
            substitution.promql(substitution.source_markers(text))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def render(params: Mapping[str, Any], context: Mapping[str, Any], languages: Languages | None = None) -> dict[str, Any]:
    """Render every templated string, each value escaped for its parameter's language;
    raise ValueError when a value is missing or cannot be one value of that language."""
    return {
        key: _render_value(value, context, (languages or {}).get(key, Language.TEXT)) for key, value in params.items()
    }


def _render_value(value: Any, context: Mapping[str, Any], language: Language) -> Any:
    if not isinstance(value, str):  # str first: most values are, and Mapping's check is slow
        if isinstance(value, list):
            return [_render_value(item, context, language) for item in value]
        if isinstance(value, Mapping):
            return render(value, context)
        return value
    if not is_template(value):
        return value
    try:
        rendered = _template(language, value).render(context)
        if language is Language.PROMQL:
            rendered = substitution.promql(rendered)
    except jinja2.UndefinedError as err:
        raise ValueError(f"template {value!r}: {err.message}") from None
    except jinja2.exceptions.SecurityError as err:
        raise ValueError(f"template {value!r} was refused by the sandbox: {err}") from None
    except ValueError as err:
        raise ValueError(f"template {value!r}: {err}") from None
    except Exception as err:  # the policy's own code failed (a type error, recursion): the step's problem
        raise ValueError(f"template {value!r} failed: {type(err).__name__}: {err}") from None
    if language is Language.URL and any(unquote(part) in (".", "..") for part in urlsplit(rendered).path.split("/")):
        # quote() keeps dots: a value ".." would climb out of the path the policy wrote
        raise ValueError(f"template {value!r}: the values made a '.' or '..' segment of the URL path: {rendered!r}")
    return rendered
