"""Budgets for the policy's own code: no ``with`` template and no ``when`` stalls the operator.

Templates and CEL run on the event loop every incident shares, and nothing can interrupt
them once they run (a timeout only fires between awaits). So their cost is bounded by
construction:

- a template gets :data:`MAX_OPERATIONS` operations (loop iterations and calls) and
  :data:`MAX_OUTPUT` characters of output; no value it computes (``~``, ``+``, ``*``,
  ``%``, filters, string methods) may be longer than that, ``range()`` gives at most
  :data:`MAX_RANGE` numbers, and padding widths and format widths stay within
  :data:`MAX_OUTPUT`. Past any of these the render stops with a :class:`BudgetExceeded`
  (a sandbox refusal, so the step fails with the reason). :func:`check_budget` refuses on
  apply what would exceed it for any incident: nested loops over constant ranges, and
  recursive loops;
- a ``when`` may be :data:`MAX_WHEN` characters long and may not nest comprehensions
  (``all``, ``exists``, ``exists_one``, ``map``, ``filter``): the CEL library runs them
  in Rust holding the interpreter, with no cost limit, and each nesting level multiplies
  the work by the size of a list (:func:`check_when`).
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OPERATIONS = 10_000
MAX_OUTPUT = 64 * 1024
MAX_RANGE = 1_000
MAX_WHEN = 1024
MAX_COMPREHENSION_DEPTH = 1

# filters and string methods whose numeric arguments size the result (widths, counts)
_SIZING_FILTERS = frozenset({"center", "indent", "batch", "slice", "wordwrap", "truncate"})
_SIZING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_FORMAT_WIDTH = re.compile(r"\d+")


class BudgetExceeded(SecurityError):
    """A template went past its budget; the message says which and by how much."""


class _Budget:
    def __init__(self) -> None:
        self.operations = 0
        self.output = 0

    def spend(self, operations: int = 1, output: int = 0) -> None:
        self.operations += operations
        self.output += output
        if self.operations > MAX_OPERATIONS:
            raise BudgetExceeded(f"more than {MAX_OPERATIONS} operations (loop iterations and calls)")
        if self.output > MAX_OUTPUT:
            raise BudgetExceeded(f"more than {MAX_OUTPUT} characters of output")


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")


def _spend(operations: int = 1, output: int = 0) -> None:
    budget = _BUDGET.get(None)
    if budget is None:  # outside BudgetTemplate.render (jinja's own compile-time folding)
        raise BudgetExceeded("budgeted code ran outside a render")
    budget.spend(operations, output)


def _bounded(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_OUTPUT:
        raise BudgetExceeded(f"a value of {len(value)} items or characters, more than {MAX_OUTPUT}")
    return value


def _check_sizes(what: str, args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and arg > MAX_OUTPUT:
            raise BudgetExceeded(f"{what}({arg}): more than {MAX_OUTPUT}")


def _check_format(text: Any) -> None:
    if isinstance(text, str) and any(int(n) > MAX_OUTPUT for n in _FORMAT_WIDTH.findall(text)):
        raise BudgetExceeded(f"format {text[:80]!r} has a width or precision over {MAX_OUTPUT}")


def _check_replace(text: str, old: Any, new: Any, count: Any = None) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        times = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            times = min(times, count)
        _bounded_size(len(text) + times * (len(new) - len(old)))


def _bounded_size(size: int) -> None:
    if size > MAX_OUTPUT:
        raise BudgetExceeded(f"a value of {size} characters, more than {MAX_OUTPUT}")


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise BudgetExceeded(f"range() of {len(numbers)} numbers, more than {MAX_RANGE}")
    return numbers


class _Generator(CodeGenerator):
    """Charges every loop iteration and bounds every ``~`` (jinja emits neither as a call)."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if node.recursive:
            raise BudgetExceeded("recursive loops are not allowed")
        counted = nodes.EnvironmentAttribute("counted", lineno=node.lineno)
        node.iter = nodes.Call(counted, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")


class BudgetTemplate(jinja2.Template):
    """Renders within a fresh budget, stopping as soon as the output passes MAX_OUTPUT."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        token = _BUDGET.set(_Budget())
        try:
            parts = []
            for part in self.generate(*args, **kwargs):
                _spend(0, len(part))
                parts.append(part)
            return "".join(parts)
        finally:
            _BUDGET.reset(token)


class BudgetEnvironment(ImmutableSandboxedEnvironment):
    """jinja's immutable sandbox, with the budgets above."""

    code_generator_class = _Generator
    template_class = BudgetTemplate
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _range
        del self.globals["lipsum"]  # lipsum(n) writes n paragraphs
        self.filters = {name: self._bounded_filter(name, fn) for name, fn in self.filters.items()}

    @staticmethod
    def counted(items: Iterable[Any]) -> Iterator[Any]:
        """What a ``for`` loop iterates: each item costs one operation."""
        for item in items:
            _spend()
            yield item

    @staticmethod
    def bounded(value: Any) -> Any:
        return _bounded(value)

    @staticmethod
    def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # keeps jinja's pass_context/pass_environment marks
        def bounded(*args: Any, **kwargs: Any) -> Any:
            _spend()
            if name in _SIZING_FILTERS:
                _check_sizes(name, [*args[1:], *kwargs.values()])
            elif name == "format" and args:
                _check_format(args[0])
            elif name == "replace" and len(args) >= 4:  # (eval context, text, old, new[, count])
                _check_replace(str(args[1]), args[2], args[3], args[4] if len(args) > 4 else kwargs.get("count"))
            return _bounded(fn(*args, **kwargs))

        return bounded

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _spend()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            _bounded_size(math.ceil(right * math.log2(abs(left)) / 8))  # the result's size in bytes
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _bounded_size(len(seq) * times)
            if isinstance(left, int) and isinstance(right, int):
                _bounded_size((left.bit_length() + right.bit_length()) // 8)
        elif operator == "%":
            _check_format(left)
        return _bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        if isinstance(getattr(__obj, "__self__", None), str):
            name = __obj.__name__
            if name in _SIZING_METHODS:
                _check_sizes(name, args)
            elif name == "replace" and len(args) >= 2:
                _check_replace(__obj.__self__, *args[:3])
        return _bounded(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:  # value is the str.format (or format_map) of a format string
            _check_format(value.__self__)
        return wrapped


_PARSER = jinja2.Environment()


def check_budget(source: str, where: str) -> None:
    """Refuse, on apply, a template that exceeds its budget whatever the incident: recursive
    loops, ranges over MAX_RANGE, and nested loops over constant ranges past MAX_OPERATIONS."""
    try:
        _walk(_PARSER.parse(source), 1)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _walk(node: nodes.Node, iterations: int) -> None:
    """``iterations``: how many times the loops around ``node`` run it."""
    if not isinstance(node, nodes.For):
        if isinstance(node, nodes.Call):
            _constant_range(node)
        for child in node.iter_child_nodes():
            _walk(child, iterations)
        return
    if node.recursive:
        raise ValueError("recursive loops are not allowed in templates")
    _walk(node.iter, iterations)
    inner = iterations * _constant_range(node.iter)
    if inner > MAX_OPERATIONS:
        raise ValueError(f"nested loops run {inner} iterations, more than the template budget of {MAX_OPERATIONS}")
    for part in (*node.body, *([node.test] if node.test else [])):
        _walk(part, inner)
    for part in node.else_:
        _walk(part, iterations)


def _constant_range(node: nodes.Node) -> int:
    """How many numbers a ``range()`` with constant arguments gives (1 for anything else)."""
    if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range"):
        return 1
    try:
        numbers = range(*(arg.as_const() for arg in node.args))
    except (nodes.Impossible, TypeError, ValueError):
        return 1
    if len(numbers) > MAX_RANGE:
        raise ValueError(f"range() of {len(numbers)} numbers, more than {MAX_RANGE}")
    return len(numbers)


_MACRO = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(")
_STRING = re.compile(r"""[rRbB]{0,2}(\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")


def check_when(source: str) -> None:
    """Refuse a ``when`` longer than MAX_WHEN or with comprehensions nested past MAX_COMPREHENSION_DEPTH."""
    if len(source) > MAX_WHEN:
        raise ValueError(f"is {len(source)} characters long, more than {MAX_WHEN}")
    code = _STRING.sub('""', source)  # a macro name inside a string literal is text
    open_macros: list[bool] = []  # one entry per open parenthesis: does it start a comprehension?
    at = 0
    while at < len(code):
        macro = _MACRO.match(code, at)
        if macro:
            depth = sum(open_macros) + 1
            if depth > MAX_COMPREHENSION_DEPTH:
                raise ValueError(
                    f"{macro.group(1)}() inside another comprehension: comprehensions may not be nested "
                    f"(each level multiplies the cost by a list's size, and CEL evaluation cannot be interrupted)"
                )
            open_macros.append(True)
            at = macro.end()
            continue
        char = code[at]
        if char in "([{":
            open_macros.append(False)
        elif char in ")]}" and open_macros:
            open_macros.pop()
        at += 1
