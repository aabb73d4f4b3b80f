"""Budgets: no template, `when` or errorPattern a policy can hold stalls the operator (issue 13).

Each attack below ran for minutes (or exhausted memory) before the budgets: nested
ranges, values that double, huge widths, nested CEL comprehensions, and a quadratic
regex on a long log line. Times are compared as ratios, never as absolute figures.
"""

from __future__ import annotations

import time

import pytest

from runbook_operator.actions import ActionContext, ErrorScan
from runbook_operator.domain.expressions import When, render
from runbook_operator.domain.sandbox import MAX_OPERATIONS, MAX_OUTPUT, MAX_RANGE, MAX_WHEN
from tests.unit.builders import check, invalid, policy

CTX = {"incident": {"alert": "RedisDown", "labels": {"svc": "redis"}}, "steps": {}, "findings": []}


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
    assert reason in str(refused.value)
    assert time.perf_counter() - started < 1.0  # each of these ran for seconds to minutes, or ran out of memory


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
    assert time.perf_counter() - started < 0.5


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
