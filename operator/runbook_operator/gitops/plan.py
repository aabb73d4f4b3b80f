"""``runbook-operator plan``: what the operator would do for an Incident, step by step, rendered
offline from the policies (templates shown with what is only known at run time marked)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import cel
from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runbook_operator.domain import expressions
from runbook_operator.domain.budgets import Ask, Budget, applicable
from runbook_operator.domain.durations import format_duration
from runbook_operator.domain.matching import select_policy
from runbook_operator.domain.model import (
    ANNOUNCEABLE,
    DEFAULT_SEVERITY,
    POLICY_STAGES,
    RESPONSE_TIME,
    Incident,
    InvalidPolicy,
    Policy,
    Stage,
    Step,
    default_escalation,
)
from runbook_operator.domain.parsing import ParamValidator, parse_policy
from runbook_operator.domain.progress import NO_ANNOUNCEMENT
from runbook_operator.domain.substitution import Language
from runbook_operator.gitops.schema import show

SECRET_MAPS = frozenset({"headersFromSecrets"})
_STEP_REF = re.compile(r"\bsteps\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_PARSER = ImmutableSandboxedEnvironment()


def _runtime_roots(text: str) -> set[str]:
    try:
        names = meta.find_undeclared_variables(_PARSER.parse(text))
    except TemplateSyntaxError:
        return set()
    return set(names) & {"steps", "findings"}


def _runtime_marker(text: str) -> str | None:
    """``<from step X at run time>`` for a template that needs step results, else None."""
    roots = _runtime_roots(text)
    if not roots:
        return None
    sources = [f"step {', '.join(dict.fromkeys(a or b for a, b in _STEP_REF.findall(text)))}".strip()]
    if "steps" in roots and sources == ["step"]:
        sources = ["steps"]
    if "steps" not in roots:
        sources = []
    if "findings" in roots:
        sources.append("findings")
    return f"<from {' and '.join(sources)} at run time>"


class _Renderer:
    """Renders a step's parameters with the incident's fields; notes what cannot be rendered."""

    def __init__(self, variables: Mapping[str, Any], languages: expressions.Languages) -> None:
        self.variables, self.languages = variables, languages
        self.warnings: list[str] = []

    def scalar(self, key: str, value: Any, language: Language = Language.TEXT) -> Any:
        if not expressions.is_template(value):
            return value
        marker = _runtime_marker(value)
        if marker:
            return marker
        try:
            return expressions.render({key: value}, self.variables, {key: language})[key]
        except ValueError as err:
            self.warnings.append(f"{key}: {err}")
            return f"<cannot render: {err}>"

    def data(self, key: str, value: Any, language: Language = Language.TEXT) -> Any:
        if isinstance(value, Mapping):
            return {k: self.data(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(key, v) for v in value]
        return self.scalar(key, value, language)

    def secret(self, ref: Any) -> str:
        if isinstance(ref, Mapping) and ref.get("name") and ref.get("key"):
            name, key = self.scalar("name", ref["name"]), self.scalar("key", ref["key"])
            return f"secret {name}/{key} (read at run time)"
        return "secret (read at run time)"

    def lines(self, params: Mapping[str, Any], indent: str, top: bool = True) -> list[str]:
        out: list[str] = []
        for key, value in params.items():
            if key.endswith("SecretRef"):
                out.append(f"{indent}{key}: {self.secret(value)}")
            elif key in SECRET_MAPS and isinstance(value, Mapping):
                out.append(f"{indent}{key}:")
                out.extend(f"{indent}  {k}: {self.secret(v)}" for k, v in value.items())
            elif isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
                out.append(f"{indent}{key}:")
                out.extend(self.lines(value, indent + "  ", top=False))
            else:
                shown = self.data(key, value, self.languages.get(key, Language.TEXT) if top else Language.TEXT)
                out.append(f"{indent}{key}: {shown if isinstance(shown, str) else show(shown)}")
        return out


def _when(step: Step, variables: Mapping[str, Any]) -> str:
    assert step.when is not None
    source = step.when.source
    if set(cel.compile(source).variables()) & {"steps", "findings"}:
        return f"when: {source}  (decided at run time: refers to step results)"
    try:
        result = step.when.evaluate(variables)
    except ValueError as err:
        return f"when: {source}  (cannot be evaluated: {err}; the step would be skipped)"
    return f"when: {source}  → {'true' if result else 'false: the step would be skipped'}"


def _step_lines(number: int, step: Step, dry_run: bool, variables: Mapping[str, Any]) -> list[str]:
    flags = []
    if step.read_only:
        flags.append("read-only")
    if step.destructive:
        flags.append("destructive")
    if step.requires_approval and not step.notifies:
        flags.append("needs approval")
    if step.continue_on_failure:
        flags.append("continues on failure")
    if dry_run and not step.read_only:
        flags.append("dry run: recorded as Skipped, not run")
    pad = " " * (len(str(number)) + 6)
    lines = [f"    {number}. {step.name}  {step.action}" + (f"  [{', '.join(flags)}]" if flags else "")]
    if step.when is not None:
        lines.append(pad + _when(step, variables))
    timing = []
    if step.timeout is not None:
        timing.append(f"timeout {format_duration(step.timeout)}")
    if step.retries:
        timing.append(f"retries {step.retries}, backoff {format_duration(step.backoff)}")
    if timing:
        lines.append(pad + ", ".join(timing))
    renderer = _Renderer(variables, step.languages)
    lines.extend(renderer.lines(step.params, pad))
    lines.extend(f"{pad}! would fail at run time: cannot render {w}" for w in renderer.warnings)
    return lines


def _policy_lines(incident: Incident, policy: Policy) -> list[str]:
    severity = incident.severity or policy.severity or DEFAULT_SEVERITY
    source = "the incident's" if incident.severity else "the policy's" if policy.severity else "the default"
    variables = {"incident": incident.view(severity), "steps": {}, "findings": [], "announcement": NO_ANNOUNCEMENT}
    dry_run = incident.dry_run or policy.dry_run
    lines = [f"Severity: {severity} ({source}); response within {format_duration(RESPONSE_TIME[severity])}"]
    if dry_run:
        lines.append("Dry run: only read-only steps run; the incident ends Escalated (DryRun) unless verified")
    if policy.suspend or incident.suspend:
        lines.append(f"Suspended ({'the policy' if policy.suspend else 'the incident'}): nothing runs until resumed")
    notes = {
        Stage.DIAGNOSE: "run once; failures become findings",
        Stage.REMEDIATE: f"up to {policy.max_attempts} attempt(s)"
        + (f", then settle {format_duration(policy.settle)}" if policy.settle else ""),
        Stage.VERIFY: "all must pass to resolve",
    }
    for stage in POLICY_STAGES:
        steps = policy.steps(stage)
        lines.append("")
        lines.append(f"{stage.value} ({notes[stage]})" if steps else f"{stage.value}: no steps")
        for i, step in enumerate(steps, 1):
            lines.extend(_step_lines(i, step, dry_run, variables))
    lines += _announce_lines(policy, severity, dry_run, variables)
    escalation = policy.escalation or default_escalation(severity)
    lines.append("")
    default = "" if policy.escalation else ", the runbook's defaults"
    after = (
        f"after {escalation.after_attempts} failed attempt(s)" if escalation.after_attempts else "when attempts run out"
    )
    lines.append(f"Escalate ({after}{default})")
    for level in escalation.levels:
        when = (
            "when the incident escalates" if level.after is None else f"after {format_duration(level.after)} unresolved"
        )
        lines.append(f"  {level.name} ({when})" + ("" if level.notify else ": no notification steps"))
        for i, step in enumerate(level.notify, 1):
            lines.extend(_step_lines(i, step, dry_run, variables))
    if escalation.update_every:
        lines.append(f"  updates every {format_duration(escalation.update_every)} while unresolved (the last level)")
    return lines


def _announce_lines(policy: Policy, severity: str, dry_run: bool, variables: Mapping[str, Any]) -> list[str]:
    if not policy.announce:
        return ["", "Announce: no status changes are announced"]
    lines = ["", "Announce (each change once, before the incident's next step)"]
    for entry in policy.announce:
        phases = [p for p in ANNOUNCEABLE if entry.announces(p, severity)]
        default = "" if entry.phases is not None else f" (the {severity} default)"
        lines.append(f"  on {', '.join(phases) or 'no change'}{default}")
        shown = {**variables, "announcement": {**NO_ANNOUNCEMENT, "phase": phases[0] if phases else "", "number": 1}}
        for i, step in enumerate(entry.notify, 1):
            lines.extend(_step_lines(i, step, dry_run and not entry.dry_run, shown))
    return lines


def _budget_lines(incident: Incident, policy: Policy, budgets: Sequence[Budget], now: datetime) -> list[str]:
    """Which budgets limit the policy's remediation, and whether they would throttle it now (when the
    files carry their ledgers, as `kubectl get rbud -o yaml` writes them)."""
    severity = incident.severity or policy.severity or DEFAULT_SEVERITY
    chosen = applicable(budgets, [], policy, incident, severity)
    if not chosen:
        return ["", "Budgets: none in these files selects the policy (the operator-wide default applies, if any)"]
    lines = ["", "Budgets (a remediation step past one waits Throttled, or for a person to approve it past it)"]
    first = next((s for s in policy.remediate if not s.read_only), None)
    for budget in chosen:
        limits = [w.text(what) for w, what in ((budget.remediations, "remediation(s)"),
                                               (budget.destructive, "destructive step(s)"),
                                               (budget.per_target, "remediation(s) per target")) if w]  # fmt: skip
        if budget.concurrent is not None:
            limits.append(f"{budget.concurrent} incident(s) remediating at once")
        lines.append(f"  {budget.key}: {', '.join(limits)}")
        if first is not None and (refusal := budget.refusal(Ask.of(incident, first, 1), now)) is not None:
            lines.append(f"    would be throttled now: step {first.name!r} waits: {refusal.text()}")
    return lines


def plan(
    incident_body: Mapping[str, Any],
    policy_bodies: Iterable[Mapping[str, Any]],
    check: ParamValidator,
    budgets: Sequence[Budget] = (),
    now: datetime | None = None,
) -> tuple[list[str], bool]:
    """What the operator would do with the incident, as lines, and whether a usable policy matched.
    ``budgets``: RemediationBudgets (with their ledgers, if known) to say what would throttle it."""
    incident = Incident.from_body(incident_body)
    candidates = [parse_policy(body, check) for body in policy_bodies]
    selection = select_policy(incident, candidates)
    labels = ", ".join(f"{k}={v}" for k, v in incident.labels.items()) or "none"
    lines = [
        f"Incident {incident.namespace}/{incident.name}: alert {incident.alert}, "
        f"severity {incident.severity or '(unset)'}, labels {labels}"
    ]
    chosen = selection.chosen
    if chosen is None:
        lines.append(f"No policy: {selection.reason}")
    else:
        lines.append(f"Policy: {chosen.name}: {selection.reason}")
    if selection.rejected:
        lines.append("Not chosen:")
        lines.extend(f"  {name}: {why}" for name, why in selection.rejected)
    if chosen is None:
        lines.append("The operator would escalate it at once (reason NoMatchingPolicy).")
        return lines, False
    if isinstance(chosen, InvalidPolicy):
        lines.append(f"Policy {chosen.name} is invalid: {chosen.error}")
        lines.append("The operator would escalate it at once (reason InvalidPolicy).")
        return lines, False
    shown = _policy_lines(incident, chosen)
    if budgets:
        shown += _budget_lines(incident, chosen, budgets, now or datetime.now(UTC))
    return [*lines, *shown], True
