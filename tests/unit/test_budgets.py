"""Budgets: no template, `when` or errorPattern a policy can hold stalls the operator (issue 13).

Each attack below ran for minutes (or exhausted memory) before the budgets: nested
ranges, values that double, huge widths, nested CEL comprehensions, and a quadratic
regex on a long log line. Times are compared as ratios, never as absolute figures.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbook_operator.actions import ActionContext, ErrorScan
from runbook_operator.domain.expressions import When, render
from runbook_operator.domain.sandbox import MAX_OPERATIONS, MAX_OUTPUT, MAX_RANGE, MAX_WHEN
from tests.unit.builders import check, invalid, policy

CTX = {"incident": {"alert": "RedisDown", "labels": {"svc": "redis"}}, "steps": {}, "findings": []}
RATIO = 300  # plain renders a refused template may take (measured: up to 53); unbounded, seconds to minutes


_FRESH = itertools.count()


def plain_render() -> float:
    """Seconds a plain one-expression template takes to render here and now: the best of five, so
    a time bound is a ratio to this machine's speed at this moment, not a number of seconds."""
    best = float("inf")
    for _ in range(5):
        fresh = next(_FRESH)  # a template never seen: compiled, as theirs (compiled templates are kept)
        started = time.perf_counter()
        render({"body": f"{{{{ incident.alert }}}}-{fresh}"}, CTX)
        best = min(best, time.perf_counter() - started)
    return best


PEAK_BOUND = 16 * 1024 * 1024  # bytes a render may hold at its peak (tracemalloc), whatever the template
RED_TEAM = '{{ ("x" * 65536) | list | join("y" * 65536) }}'


def _expressions() -> st.SearchStrategy[str]:
    """Jinja expressions over big strings and lists, from the filters, methods and operators that build values."""
    size = st.sampled_from([1, 100, 20_000, 65_536])
    leaf = st.one_of(
        size.map(lambda n: f'("x" * {n})'),
        size.map(lambda n: f'("€" * {n})'),
        st.sampled_from(["incident.labels.svc", "incident.alert", "[1, 2, 3]", "range(1000)", "incident"]),
    )

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        unary = st.sampled_from(["list", "tojson", "string", "pprint", "unique", "reverse", "sort", "urlencode",
                                 "upper", "title", "trim", "batch(3)", "slice(1000)", "map('string')",
                                 "indent(1000)", "wordwrap(2)", "center(60000)", "replace('x', 'yyyy')",
                                 "format(1, 2)", "tojson(8)", "dictsort", "items", "first", "last"])  # fmt: skip
        return st.one_of(
            st.tuples(inner, unary).map(lambda t: f"({t[0]} | {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} | join({t[1]}))"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} ~ {t[1]} ~ {t[0]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} + {t[1]})"),
            st.tuples(inner, st.sampled_from([2, 100, 4096])).map(lambda t: f"({t[0]} * {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"[{t[0]}, {t[1]}, {t[0]}]"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}).join({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f'("{{0}}{{0}}{{1}}").format({t[0]}, {t[1]})'),
            st.tuples(inner, inner).map(lambda t: f'("%s%s" % ({t[0]}, {t[1]}))'),
        )

    return st.recursive(leaf, grow, max_leaves=6)


def _templates() -> st.SearchStrategy[str]:
    expression = _expressions()
    return st.one_of(
        expression.map(lambda e: f"{{{{ {e} }}}}"),
        expression.map(lambda e: f"{{% for i in range(1000) %}}{{{{ {e} }}}}{{% endfor %}}"),
        expression.map(
            lambda e: (
                f"{{% set ns = namespace(l=[]) %}}{{% for i in range(1000) %}}{{% set ns.l = ns.l + [{e}] %}}"
                "{% endfor %}{{ ns.l | length }}"
            )
        ),
        expression.map(
            lambda e: (
                f"{{% macro m() %}}{{{{ {e} }}}}{{% endmacro %}}{{% filter upper %}}"
                f"{{% for i in range(1000) %}}{{{{ m() }}}}{{% endfor %}}{{% endfilter %}}"
            )
        ),
    )


def templated(url_path: str) -> dict[str, object]:
    return check("probe", url=f"http://127.0.0.1:1/{url_path}")


# -- templates: refused on apply ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}"
            "{% endfor %}{% endfor %}",
            f"nested loops run 1000000 iterations, more than the template budget of {MAX_OPERATIONS}",
        ),
        ("{% for a in range(100000) %}{% endfor %}", f"range\\(\\) of 100000 numbers, more than {MAX_RANGE}"),
        ("{% for x in [1] recursive %}{{ loop([]) }}{% endfor %}", "recursive loops are not allowed in templates"),
    ],
)
def test_templates_over_budget_are_refused_on_apply(template: str, message: str) -> None:
    refused = invalid(diagnose=[templated(template)])
    assert "spec.diagnose[0].with (http.check): url: " in refused.error
    assert message.replace("\\", "") in refused.error


def test_ordinary_loops_still_apply_and_render() -> None:
    applied = policy(diagnose=[templated("{% for i in range(3) %}{{ i }}{% endfor %}-{{ incident.labels.svc }}")])
    rendered = render(applied.diagnose[0].params, CTX)
    assert rendered["url"] == "http://127.0.0.1:1/012-redis"


# -- templates: bounded at render -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # loops over data pass apply (their size is the incident's); the operation count stops them
        ("{% for a in incident.labels.n %}{% for b in incident.labels.n %}{% endfor %}{% endfor %}", "operations"),
        ("{% for i in range(1000) %}{{ 'y' * 100 }}{% endfor %}", f"more than {MAX_OUTPUT} characters of output"),
        ("{{ 'a' * 100000 }}", "a value of 100000 characters"),
        ("{% set n = namespace(s='a') %}{% for i in range(40) %}{% set n.s = n.s ~ n.s %}{% endfor %}", "a value of"),
        ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('a', 40) }}", "a value of"),
        ("{{ ('a' * 60000)|replace('a', 'aa') }}", "a value of 120000 characters"),
        ("{{ 'a'|center(10**9) }}", "center(1000000000)"),
        ("{{ 'a'.ljust(10**9) }}", "ljust(1000000000)"),
        ("{{ '%0999999999d' % 1 }}", "width or precision over"),
        ("{{ '{:>999999999}'.format(1) }}", "width or precision over"),
        ("{{ '%0999999999d'|format(1) }}", "width or precision over"),
        ("{{ 7 ** 10000000 }}", "more than"),
    ],
)
def test_render_stops_at_the_budget(template: str, reason: str) -> None:
    context = {**CTX, "incident": {"labels": {"n": list(range(MAX_RANGE))}}}
    started = time.perf_counter()
    with pytest.raises(ValueError, match="was refused by the sandbox") as refused:
        render({"body": template}, context)
    took = time.perf_counter() - started
    assert reason in str(refused.value)
    # each of these ran for seconds to minutes, or ran out of memory: now as long as a few plain renders
    assert took < RATIO * plain_render(), took


# Issue 22, finding 1: each of these built hundreds of MB to GB inside one call before the
# 64 KiB check looked at the result; now the size is checked before the value is built.
BIG = '{% set s = "x" * 60000 %}'


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ('{{ ("x" * 30000) | list | join("y" * 30000) }}', "a value of 9000"),  # 900 MB
        ('{{ ("x" * 65536) | list | join("y" * 65536) }}', "a value of more than"),  # the red team's, 4 GiB
        (BIG + "{{ ([s] * 4096) | tojson }}", "a value of 245772288 characters"),  # 554 MB of JSON
        (BIG + "{{ [s, s, s] | tojson }}", "a value of more than"),  # a literal list of one string
        (BIG + "{{ [s, s] }}", "a value of more than"),  # written out by {{ }}
        (BIG + "{{ s ~ s ~ s }}", "a value of 180000 characters"),
        (BIG + '{{ "{0}{0}{0}{0}{0}{0}".format(s) }}', "a value of 360"),
        (BIG + '{{ "%s%s%s%s%s" % ((s,) * 5) }}', "a value of"),
        ('{{ ("\n" * 60000) | indent(60000) }}', "a value of 36001"),
        ('{{ ("a " * 30000) | wordwrap(1, wrapstring="y" * 60000) }}', "a value of 72001"),
        ("{{ range(1000) | map('center', 65536) | join }}", "a value of 65537 characters"),
        ("{{ [[1]] * 30000 | sum(start=[]) }}", "sum() adds numbers only"),  # quadratic copying
        ('{{ ("\t" * 60000).expandtabs(60000) }}', "str.expandtabs() is not available"),
        ("{{ 'x'.translate({120: 'y' * 60000}) }}", "str.translate() is not available"),
        # values held at once: each below 64 KiB, their sum is the render's allocation
        (BIG + "".join(f"{{% set a{i} = s ~ {i} %}}" for i in range(20)), "add up to more than"),
        (
            "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l, ('x' * 60000) ~ i] %}"
            "{% endfor %}",
            "a value of more than",
        ),
        (
            "{% set ns = namespace(l=[]) %}{% for i in range(900) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
            "nested more than",
        ),
        (
            '{% macro d(n) %}{% set s = "€" * 60000 %}{% if n %}{{ d(n - 1) }}{% endif %}{% endmacro %}{{ d(900) }}',
            "more than",
        ),
        ("{% macro d(n) %}{% if n %}{{ d(n - 1) }}{% endif %}{% endmacro %}{{ d(900) }}", "macros called more than"),
        (
            "{% filter upper %}{% for i in range(1000) %}" + "x" * 10000 + "{% endfor %}{% endfilter %}",
            "add up to more than",
        ),  # a block's buffer: 10 MB of constants
    ],
)
def test_render_checks_sizes_before_it_builds(template: str, reason: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="was refused by the sandbox") as refused:
            render({"body": template}, CTX)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason in str(refused.value)
    assert peak < PEAK_BOUND, f"{peak / 1e6:.1f} MB"


def test_the_red_teams_template_is_refused_on_apply() -> None:
    """Its constant part alone goes past the budget: no incident can make it fit."""
    probe = {"name": "probe", "action": "http.check", "with": {"url": "http://127.0.0.1:1/", "bodyContains": RED_TEAM}}
    refused = invalid(diagnose=[probe])
    assert "spec.diagnose[0].with (http.check): bodyContains: its constant part at line 1 goes past" in refused.error


def test_templates_whose_constant_parts_fit_still_apply_and_render() -> None:
    fits = '{{ ("a" * 10) ~ "-" ~ incident.labels.svc }}/{{ [1, 2] | join(",") }}/{{ "%s" | format(incident.alert) }}'
    applied = policy(diagnose=[templated(fits)])
    assert render(applied.diagnose[0].params, CTX)["url"] == "http://127.0.0.1:1/aaaaaaaaaa-redis/1,2/RedisDown"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=_templates())
def test_no_template_built_from_the_filters_holds_more_than_the_bound(template: str) -> None:
    """Property: whatever a template combines (sizes up to the budget, every value-building filter,
    method and operator, loops and accumulators), a render's peak memory stays under PEAK_BOUND."""
    tracemalloc.start()
    try:
        with contextlib.suppress(ValueError):  # refused (budget, or a type error): only memory matters here
            render({"body": template}, CTX)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BOUND, f"{template}: {peak / 1e6:.1f} MB"


def test_lipsum_is_not_offered() -> None:
    with pytest.raises(ValueError, match="'lipsum' is undefined"):
        render({"body": "{{ lipsum(1000000) }}"}, CTX)


def test_the_worst_template_that_applies_renders_in_milliseconds() -> None:
    """Nested loops right at the budget: what a hostile policy can still make the operator do."""
    worst = "{% for a in range(100) %}{% for b in range(99) %}{{ a }}{% endfor %}{% endfor %}"
    applied = policy(diagnose=[templated(worst)])
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"characters of output|operations"):
        render(applied.diagnose[0].params, CTX)
    took = time.perf_counter() - started
    assert took < RATIO * plain_render(), took


# -- when: CEL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("[1, 2].all(incident, [3, 4].exists(steps, true))", "exists() inside another comprehension"),
        ("[1].map(findings, [2].filter(steps, steps > 0))", "filter() inside another comprehension"),
        ("x" * (MAX_WHEN + 1), f"is {MAX_WHEN + 1} characters long, more than {MAX_WHEN}"),
    ],
)
def test_when_over_budget_is_refused_on_apply(source: str, message: str) -> None:
    refused = invalid(diagnose=[check("a"), check("b", when=source)])
    assert f"spec.diagnose[1].when: {message}" in refused.error


@pytest.mark.parametrize(
    "source",
    [
        "[1].all(incident, true) && [2].exists(steps, true)",  # side by side, not nested
        "[1, 2].map(incident, incident * 2).filter(steps, steps > 2).size() == 1",  # chained
        "'.all(x, y.all(z' != ''",  # a macro name in a string literal is text
    ],
)
def test_unnested_comprehensions_still_apply(source: str) -> None:
    assert isinstance(When(source).evaluate(CTX), bool)


def test_nested_comprehensions_were_exponential() -> None:
    """Why: each nesting level multiplies the work; at depth 5 over 20 items CEL ran ~1 s
    on this machine, holding the interpreter (threads do not help)."""
    items = "[" + ",".join("0" for _ in range(20)) + "]"
    with pytest.raises(ValueError, match="may not be nested"):
        When((items + ".all(incident, ") * 5 + "true" + ")" * 5)


# -- errorPattern: RE2 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [(r"(\w+) \1", "backreference"), (r"error(?!: ignored)", "lookahead"), (r"(?<=db )error", "lookbehind")],
)
def test_patterns_re2_cannot_run_are_refused_on_apply_saying_why(pattern: str, construct: str) -> None:
    with pytest.raises(ValueError, match="errorPattern runs on RE2") as refused:
        ErrorScan.model_validate({"errorPattern": pattern})
    assert f"invalid regular expression {pattern!r}" in str(refused.value)
    assert "backreferences, lookahead/lookbehind" in str(refused.value), construct


async def test_a_quadratic_pattern_scans_a_long_line_in_linear_time() -> None:
    """`(?i)error.*timeout` on a line of "error error ...": Python's re took 1.5 s at 46 KiB
    and minutes at 1 MiB (quadratic). RE2 must grow with the length, ~23x for 23x."""
    scan = ErrorScan.model_validate({"errorPattern": r"(?i)error.*timeout"})
    ctx = ActionContext(namespace="ns", incident="i", timeout=10)

    async def seconds(size: int) -> float:
        line = "error " * (size // 6)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            lines, matching = await scan.scan(line + "\nerror: timeout\n", ctx)
            best = min(best, time.perf_counter() - started)
        assert len(lines) == 2 and matching == ["error: timeout"]
        return best

    small, large = await seconds(46 * 1024), await seconds(1024 * 1024)
    ratio = large / small
    print(f"errorPattern scan: 46 KiB {small * 1e3:.2f} ms, 1 MiB {large * 1e3:.2f} ms, ratio {ratio:.1f}")
    assert ratio < 100, f"1 MiB took {ratio:.0f}x the time of 46 KiB (linear is ~23x, quadratic ~500x)"
