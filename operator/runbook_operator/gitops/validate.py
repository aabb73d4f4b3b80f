"""``runbook-operator validate``: each RemediationPolicy and Incident against its CRD's schema
and, for policies, as the operator parses them (action parameters, CEL, templates, durations)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook_operator.domain.budgets import InvalidBudget, parse_budget
from runbook_operator.domain.model import InvalidPolicy
from runbook_operator.domain.parsing import ParamValidator, parse_policy
from runbook_operator.gitops.loader import InputError, load_documents
from runbook_operator.gitops.schema import Crd, Resource, resources, schema_problems, show, yaml_files


def _field(message: str) -> str:
    """The field path a parse_policy message starts with: ``spec.remediate[0].with (x.y): ...``."""
    return message.split(": ", 1)[0].split(" (", 1)[0]


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith((f"{outer}.", f"{outer}["))


def resource_problems(resource: Resource, crds: Mapping[str, Crd], check: ParamValidator) -> list[str]:
    """Everything wrong with one resource, each ``field: problem``."""
    body, crd = resource.body, crds[resource.kind]
    api_version = str(body.get("apiVersion"))
    if api_version not in crd.versions:
        return [f"apiVersion: Unsupported value: {show(api_version)}: supported values: {', '.join(crd.versions)}"]
    problems = schema_problems(body, crd.versions[api_version])
    if not resource.name:
        problems.insert(0, "metadata.name: Required value")
    if resource.kind == "RemediationPolicy":
        parsed = parse_policy(body, check)
        if isinstance(parsed, InvalidPolicy):
            _add_unless_said(problems, parsed.error)
    if resource.kind == "RemediationBudget":
        budget = parse_budget(body)
        if isinstance(budget, InvalidBudget):
            _add_unless_said(problems, budget.error)
    if resource.kind == "Incident" and (body.get("spec") or {}).get("approvals"):
        _add_unless_said(problems, APPROVALS_ON_CREATE)
    if resource.kind == "Incident" and (problem := _foreign_target(body)):
        _add_unless_said(problems, problem)
    return problems


def _foreign_target(body: Mapping[str, Any]) -> str | None:
    """What crds/incident-scope.yaml's admission policy answers to an Incident about another
    namespace (only when the file names the Incident's own namespace, else it cannot tell)."""
    own = (body.get("metadata") or {}).get("namespace")
    target = ((body.get("spec") or {}).get("target") or {}).get("namespace")
    if not own or not target or target == own:
        return None
    return (
        f"spec.target.namespace: {show(target)} is not this Incident's namespace {own}: an Incident may only be "
        f"about its own namespace; create it in namespace {show(target)} instead, or leave spec.target.namespace "
        f"out (it defaults to {own}) (the admission policy runbook-operator-incident-scope refuses it)"
    )


# what manifests/consent's admission policy answers to an Incident created with approvals
APPROVALS_ON_CREATE = (
    "spec.approvals: Forbidden: must be empty when an Incident is created (the admission policy "
    "runbook-operator-consent refuses it): an approval answers the request the operator opens once a step "
    "waits (kubectl runbook approve INCIDENT STEP)"
)


def _add_unless_said(problems: list[str], problem: str) -> None:
    """Add the operator's finding unless the schema said it first (both report e.g. a bad duration)."""
    mine = _field(problem)
    if not any(_covers(f, mine) or _covers(mine, f) for f in map(_field, problems)):
        problems.append(problem)


@dataclass
class Report:
    files: int = 0
    resources: int = 0
    problems: list[str] = field(default_factory=list)
    unreadable: bool = False

    @property
    def exit_code(self) -> int:
        return 2 if self.unreadable else 1 if self.problems else 0

    def summary(self) -> str:
        return f"{self.files} file(s), {self.resources} resource(s), {len(self.problems)} problem(s)"


def validate(paths: Iterable[str | Path], crds: Mapping[str, Crd], check: ParamValidator) -> Report:
    report = Report()
    try:
        files = yaml_files(paths)
    except InputError as err:
        report.problems.append(str(err))
        report.unreadable = True
        return report
    for file in files:
        report.files += 1
        try:
            found = resources(file, load_documents(file))
        except InputError as err:
            report.problems.append(str(err))
            report.unreadable = True
            continue
        for resource in found:
            report.resources += 1
            prefix = f"{resource.file}: {resource.ref}"
            report.problems.extend(f"{prefix}: {p}" for p in resource_problems(resource, crds, check))
    return report


# -- plan -------------------------------------------------------------------------------------
