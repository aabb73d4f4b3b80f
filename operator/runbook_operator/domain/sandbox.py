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
import inspect
import itertools
import math
import re
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sized, ValuesView
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

MAX_OPERATIONS = 10_000
MAX_OUTPUT = 64 * 1024
MAX_ALLOCATED = 16 * MAX_OUTPUT
MAX_RANGE = 1_000
MAX_WHEN = 1024
MAX_COMPREHENSION_DEPTH = 1
MAX_DEPTH = 32  # nesting of a value the template writes out (json, str, join); of macro calls
WEIGHED_PER_OPERATION = 256  # items of a value weighed for one operation of the budget

# filters and string methods whose numeric arguments size the result (widths, counts)
_SIZING_FILTERS = frozenset({"center", "indent", "batch", "slice", "wordwrap", "truncate"})
_SIZING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
# filters that write their whole input out: its size is checked before they run
_WRITING_FILTERS = frozenset({"string", "pprint", "urlencode", "xmlattr", "escape", "e", "forceescape", "safe"})
# filters and methods no runbook template needs whose output the budget cannot predict
_DROPPED_FILTERS = frozenset({"urlize"})  # a target/rel string repeated for every URL in the text
_REFUSED_METHODS = frozenset({"translate", "maketrans", "expandtabs", "format_map"})
# every filter _check_filter looks at before it runs; the others are bounded by their result
_CHECKED_FILTERS = _SIZING_FILTERS | _WRITING_FILTERS | {"join", "replace", "format", "sum", "tojson"}
_FORMAT_WIDTH = re.compile(r"\d+")
_FIELD = re.compile(r"%|\{")
_SMALL = 16  # what an opaque value (a macro, a loop, a generator) writes: its short repr


class BudgetExceeded(SecurityError):
    """A template went past its budget; the message says which and by how much."""


class _Budget:
    """One render's budget. ``allocated`` counts the characters of every value the template
    builds (each must also be at most MAX_OUTPUT), so it bounds the memory a render holds
    and the time it spends copying; ``weights`` remembers each container's size once."""

    def __init__(self) -> None:
        self.operations = 0
        self.output = 0
        self.allocated = 0
        self.macro_depth = 0
        self.weights: dict[int, tuple[Any, int, int]] = {}  # id -> (the container, its weight, its depth)

    def spend(self, operations: int = 1, output: int = 0) -> None:
        self.operations += operations
        self.output += output
        if self.operations > MAX_OPERATIONS:
            raise BudgetExceeded(f"more than {MAX_OPERATIONS} operations (loop iterations and calls)")
        if self.output > MAX_OUTPUT:
            raise BudgetExceeded(f"more than {MAX_OUTPUT} characters of output")

    def allocate(self, size: int) -> None:
        self.allocated += size
        if self.allocated > MAX_ALLOCATED:
            raise BudgetExceeded(f"the values it builds add up to more than {MAX_ALLOCATED} characters")

    def weigh(self, value: Any) -> tuple[int, int]:
        """The characters ``value`` makes when written out (str, tojson, join), counting a
        container's items each time they appear, and how many levels of containers it nests
        (0 for a string). Refused past MAX_OUTPUT characters or MAX_DEPTH levels, before
        anything is written."""
        leaf = _leaf(value)
        if leaf is not None:
            return leaf, 0
        known = self._known(value)
        return known if known is not None else self._weigh(value)

    def _known(self, value: Any) -> tuple[int, int] | None:
        cached = self.weights.get(id(value))
        return (cached[1], cached[2]) if cached is not None and cached[0] is value else None

    def _weigh(self, value: Any) -> tuple[int, int]:
        """Depth first without recursion; each container's (weight, depth) is remembered."""
        items = _items(value)
        if items is None:
            return _SMALL, 0
        # one frame per open container: [it, its items, running when it opened, its depth so far]
        frames: list[list[Any]] = [[value, iter(items), 0, 1]]
        on_path = {id(value)}
        running, visited, depth = 2, 0, 1
        try:
            while frames:
                frame = frames[-1]
                item = next(frame[1], _END)
                if item is _END:
                    frames.pop()
                    container, _, opened, depth = frame
                    on_path.discard(id(container))
                    self.weights[id(container)] = (container, running - opened, depth)
                    if frames:
                        frames[-1][3] = max(frames[-1][3], depth + 1)
                    continue
                visited += 1
                running += 1  # a separator
                leaf = _leaf(item)
                known = None if leaf is not None else self._known(item)
                children = None if leaf is not None or known is not None else _items(item)
                if leaf is not None:
                    running += leaf
                elif known is not None:
                    running += known[0]
                    frame[3] = max(frame[3], known[1] + 1)
                    if len(frames) + known[1] > MAX_DEPTH:
                        raise BudgetExceeded(f"a value nested more than {MAX_DEPTH} levels deep")
                elif children is None or id(item) in on_path:  # opaque, or a namespace holding itself
                    running += _SMALL
                else:
                    frames.append([item, iter(children), running, 1])
                    on_path.add(id(item))
                    running += 2
                    if len(frames) > MAX_DEPTH:
                        raise BudgetExceeded(f"a value nested more than {MAX_DEPTH} levels deep")
                if running > MAX_OUTPUT:
                    raise BudgetExceeded(f"a value of more than {MAX_OUTPUT} characters")
        finally:
            if visited >= WEIGHED_PER_OPERATION:
                self.spend(visited // WEIGHED_PER_OPERATION)
        return running, depth


_END = object()


def _leaf(value: Any) -> int | None:
    """The size of a value that holds no others, or None for a container."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return value.bit_length() * 77 // 256 + 2  # decimal digits and a sign
    if isinstance(value, float):
        return 24
    return None


def _items(value: Any) -> Iterable[Any] | None:
    """What a container writes out: its items (a mapping's keys and values), or None when
    ``value`` is opaque (its repr is short)."""
    if isinstance(value, list | tuple | set | frozenset | KeysView | ValuesView):
        return value
    if isinstance(value, Mapping | ItemsView):
        return itertools.chain.from_iterable(value.items() if isinstance(value, Mapping) else value)
    if isinstance(value, Namespace):
        return itertools.chain.from_iterable(value._Namespace__attrs.items())
    return None


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")


def _budget() -> _Budget:
    budget = _BUDGET.get(None)
    if budget is None:  # outside BudgetTemplate.render (jinja's own compile-time folding)
        raise BudgetExceeded("budgeted code ran outside a render")
    return budget


def _spend(operations: int = 1, output: int = 0) -> None:
    _budget().spend(operations, output)


def _weight(value: Any) -> int:
    return _budget().weigh(value)[0]


def _bounded(value: Any) -> Any:
    """A value the template built: at most MAX_OUTPUT characters written out, charged to
    the render's allocation."""
    _budget().allocate(_weight(value))
    return value


def _bounded_size(size: int) -> None:
    if size > MAX_OUTPUT:
        raise BudgetExceeded(f"a value of {size} characters, more than {MAX_OUTPUT}")


def _materialized(value: Any) -> Any:
    """An iterator (a generator from map/select, a dict iterator) read into a list, item by
    item, stopping at MAX_OUTPUT characters; anything else as it is."""
    if not isinstance(value, Iterator) or isinstance(value, LoopContext):
        return value
    budget, items, total = _budget(), [], 0
    for item in value:
        total += budget.weigh(item)[0] + 1
        _bounded_size(total)
        items.append(item)
    return items


def _check_sizes(what: str, args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and arg > MAX_OUTPUT:
            raise BudgetExceeded(f"{what}({arg}): more than {MAX_OUTPUT}")


def _check_format(text: Any, args: Any) -> None:
    """``text % args`` or ``text.format(args)``: widths within MAX_OUTPUT, and each field
    writing at most all of ``args``."""
    if not isinstance(text, str):
        return
    if any(int(n) > MAX_OUTPUT for n in _FORMAT_WIDTH.findall(text)):
        raise BudgetExceeded(f"format {text[:80]!r} has a width or precision over {MAX_OUTPUT}")
    fields = len(_FIELD.findall(text))
    if fields:
        _bounded_size(len(text) + fields * _weight(args))


def _check_replace(text: str, old: Any, new: Any, count: Any = None) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        times = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            times = min(times, count)
        _bounded_size(len(text) + times * (len(new) - len(old)))


def _check_join(items: Any, separator: Any) -> None:
    """What ``separator.join(items)`` writes, before it is written."""
    if not isinstance(items, Sized):
        return  # not iterable: join raises
    # each item writes at most what it weighs; the container's weight (remembered) covers them all
    _bounded_size(_weight(items) + max(len(items) - 1, 0) * _weight(separator))


def _check_filter(name: str, arguments: Mapping[str, Any]) -> None:
    """Refuse, before it runs, a filter call whose result would exceed the budget."""
    if name in _SIZING_FILTERS:
        _check_sizes(name, [v for k, v in arguments.items() if k not in ("s", "value")])
    if name == "join":
        _check_join(arguments["value"], arguments.get("d", ""))
    elif name == "replace":
        _check_replace(str(arguments["s"]), arguments["old"], arguments["new"], arguments.get("count"))
    elif name == "format":
        _check_format(arguments["value"], (arguments.get("args"), arguments.get("kwargs")))
    elif name == "indent":
        width = arguments.get("width", 4)
        text = str(arguments["s"])
        _bounded_size(len(text) + (text.count("\n") + 1) * (width if isinstance(width, int) else _weight(width)))
    elif name == "wordwrap":
        # a greedy wrap fills each pair of lines past the width: at most 2*len/width lines (and one per paragraph)
        text, width = str(arguments["s"]), max(int(arguments.get("width", 79)), 1)
        lines = 2 * len(text) // width + text.count("\n") + 1
        _bounded_size(len(text) + lines * _weight(arguments.get("wrapstring") or "\n"))
    elif name == "sum":
        start = arguments.get("start", 0)
        if not isinstance(start, int | float):
            raise BudgetExceeded("sum() adds numbers only (join lists with + or strings with join)")
    elif name == "tojson":
        indent = arguments.get("indent")
        size, depth = _budget().weigh(arguments["value"])
        width = 0 if indent is None else indent if isinstance(indent, int) else _weight(indent)
        _bounded_size(size * (1 + depth * width))
    elif name in _WRITING_FILTERS:
        _weight(arguments.get("value", arguments.get("d")))


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise BudgetExceeded(f"range() of {len(numbers)} numbers, more than {MAX_RANGE}")
    return numbers


class _Buffer(list[str]):
    """Where a macro, a ``{% set %}`` block or a ``{% filter %}`` block writes: charged to
    the render's allocation as it is written (constants written in a loop too)."""

    def append(self, text: str) -> None:
        _budget().allocate(len(text))
        super().append(text)

    def extend(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.append(text)


class _Generator(CodeGenerator):
    """Charges every loop iteration, and bounds what jinja builds without a call: ``~``,
    list, tuple and dict literals, every value written out, and the buffers of macros and
    blocks."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if node.recursive:
            raise BudgetExceeded("recursive loops are not allowed")
        counted = nodes.EnvironmentAttribute("counted", lineno=node.lineno)
        node.iter = nodes.Call(counted, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _bounded_literal(self, visit: Callable[[Any, Frame], None], node: nodes.Expr, frame: Frame) -> None:
        self.write("environment.bounded(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._bounded_literal(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._bounded_literal(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an assignment's target
            super().visit_Tuple(node, frame)
            return
        self._bounded_literal(super().visit_Tuple, node, frame)

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.written(")
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.writable(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(")")
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.buffer()")


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
        if self.autoescape:
            raise ValueError("the budget's ~ writes plain text: autoescape is not supported")
        self.globals["range"] = _range
        del self.globals["lipsum"]  # lipsum(n) writes n paragraphs
        self.filters = {
            name: self._bounded_filter(name, fn) for name, fn in self.filters.items() if name not in _DROPPED_FILTERS
        }

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
    def writable(value: Any) -> Any:
        """A value about to be written out by ``{{ }}``: its size is checked first."""
        _weight(value)
        return value

    @staticmethod
    def written(text: str) -> str:
        _budget().allocate(len(text))
        return text

    @staticmethod
    def joined(values: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: the sizes of the parts are checked before they are joined."""
        _spend()
        _bounded_size(sum(_weight(value) for value in values))
        text = "".join(map(str, values))
        _bounded(text)
        return text

    @staticmethod
    def buffer() -> _Buffer:
        return _Buffer()

    @staticmethod
    def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        passed = _PassArg.from_obj(fn) is not None  # jinja passes a context or environment first

        checked = name in _CHECKED_FILTERS

        @functools.wraps(fn)  # keeps jinja's pass_context/pass_environment marks
        def bounded(*args: Any, **kwargs: Any) -> Any:
            _spend()
            args = tuple(_materialized(arg) for arg in args)
            kwargs = {key: _materialized(value) for key, value in kwargs.items()}
            if checked:
                try:
                    arguments = signature.bind(*args, **kwargs).arguments
                except TypeError:
                    arguments = {}  # the call itself raises the same TypeError, with jinja's message
                if arguments:
                    if passed:
                        arguments.pop(next(iter(signature.parameters)), None)
                    _check_filter(name, arguments)
            return _bounded(fn(*args, **kwargs))

        return bounded

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _spend()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            _bounded_size(math.ceil(right * math.log2(abs(left)) / 8))  # the result's size in bytes
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _bounded_size(_weight(seq) * times)
            if isinstance(left, int) and isinstance(right, int):
                _bounded_size((left.bit_length() + right.bit_length()) // 8)
        elif operator == "+":
            _bounded_size(_weight(left) + _weight(right))
        elif operator == "%":
            _check_format(left, right)
        return _bounded(super().call_binop(context, operator, left, right))

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        return _bounded(value) if isinstance(argument, slice) else value  # a slice is a new value

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        budget = _budget()
        if isinstance(getattr(__obj, "__self__", None), str):
            name = __obj.__name__
            if name in _REFUSED_METHODS:
                raise BudgetExceeded(f"str.{name}() is not available in templates")
            if name in _SIZING_METHODS:
                _check_sizes(name, args)
            elif name == "replace" and len(args) >= 2:
                _check_replace(__obj.__self__, *args[:3])
            elif name == "join" and len(args) == 1:
                args = (_materialized(args[0]),)
                _check_join(args[0], __obj.__self__)
        if not isinstance(__obj, Macro):
            return _bounded(super().call(__context, __obj, *args, **kwargs))
        if budget.macro_depth >= MAX_DEPTH:
            raise BudgetExceeded(f"macros called more than {MAX_DEPTH} deep")
        budget.macro_depth += 1
        try:
            return _bounded(super().call(__context, __obj, *args, **kwargs))
        finally:
            budget.macro_depth -= 1

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text = value.__self__  # value is the str.format of a format string

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format(text, (args, kwargs))
            return wrapped(*args, **kwargs)

        return checked


_PARSER = jinja2.Environment()
_PROBE = BudgetEnvironment(undefined=jinja2.StrictUndefined)


def check_budget(source: str, where: str) -> None:
    """Refuse, on apply, a template that exceeds its budget whatever the incident: recursive
    loops, ranges over MAX_RANGE, nested loops over constant ranges past MAX_OPERATIONS,
    and constant parts (no incident data in them) that already build too much."""
    try:
        parsed = _PARSER.parse(source)
        _walk(parsed, 1)
        for part in _constant_parts(parsed):
            _probe(part)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _constant_parts(node: nodes.Node) -> Iterator[nodes.Expr]:
    """The largest expressions that read no variable: their value is the same for every incident."""
    literal = isinstance(node, nodes.Const | nodes.TemplateData)
    if isinstance(node, nodes.Expr) and not literal and next(node.find_all(nodes.Name), None) is None:
        yield node
        return
    for child in node.iter_child_nodes():
        yield from _constant_parts(child)


def _probe(part: nodes.Expr) -> None:
    """Evaluate a constant part within a budget of its own: refused when it goes past it.
    Any other error is the render's to report (it depends on nothing else either)."""
    template = nodes.Template([nodes.Output([part], lineno=part.lineno)], lineno=part.lineno)
    try:
        _PROBE.from_string(template).render()
    except BudgetExceeded as err:
        raise ValueError(f"its constant part at line {part.lineno} goes past the template budget: {err}") from None
    except Exception:  # not a budget problem: the render reports it
        pass


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
