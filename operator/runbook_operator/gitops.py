"""Offline checks for a GitOps repository: ``runbook-operator validate`` and ``plan``.

Nothing here talks to a cluster or the network. ``validate`` checks each
RemediationPolicy and Incident twice, the way the cluster would:

1. against the CRD's ``openAPIV3Schema`` (what the API server checks on apply),
   with a small structural-schema validator covering what the CRDs in ``crds/``
   use: type, required, properties, additionalProperties, items, enum, pattern,
   minLength/maxLength, minimum/maximum, maxItems, maxProperties,
   x-kubernetes-preserve-unknown-fields, map-list key uniqueness, and the CRD's
   ``x-kubernetes-validations`` rules. Those rules are read from the CRD and
   evaluated with the CEL library the operator already uses for ``when`` (not a
   Python re-implementation), so a rule added to the CRD is checked here too;
   fields the API server would drop (unknown fields) are reported, as
   ``kubectl apply``'s strict field validation does;
2. for policies, with :func:`parse_policy` and the action registry (what the
   operator checks: action parameters, CEL ``when``, templates, durations).

The CRDs are read from ``$RUNBOOK_OPERATOR_CRDS``, else from the repository's
``crds/`` directory next to the package (``operator/runbook_operator/../../crds``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cel
import yaml
from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runbook_operator.domain import expressions
from runbook_operator.domain.durations import format_duration
from runbook_operator.domain.matching import select_policy
from runbook_operator.domain.model import (
    DEFAULT_SEVERITY,
    POLICY_STAGES,
    RESPONSE_TIME,
    Incident,
    InvalidPolicy,
    ParamValidator,
    Policy,
    Stage,
    Step,
    default_escalation,
    parse_policy,
)
from runbook_operator.domain.resources import GROUP

KINDS = ("RemediationPolicy", "Incident")
KUSTOMIZATION_FILES = frozenset({"kustomization.yaml", "kustomization.yml", "Kustomization"})
CRDS_ENV = "RUNBOOK_OPERATOR_CRDS"

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class InputError(Exception):
    """A file that cannot be read or parsed; the message names the file (and line)."""


# -- reading files -------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    file: str
    kind: str
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name") or "")

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name or '(no name)'}"


def yaml_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files named or found (recursively, sorted) under the paths; raises InputError."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.suffix in (".yaml", ".yml")
                and p.is_file()
                and p.name not in KUSTOMIZATION_FILES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{raw}: no such file or directory")
    return found


def _plain(value: Any) -> Any:
    """What the API server would receive as JSON: YAML timestamps become strings, keys strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat().replace("+00:00", "Z")
    return value


def load_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        return [_plain(doc) for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise InputError(f"{where}: invalid YAML: {err.problem or err.context}{column}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: invalid YAML: {err}") from None


def resources(path: Path, documents: Iterable[Any]) -> list[Resource]:
    """The Incidents and RemediationPolicies among the documents (also inside ``kind: List``)."""
    out: list[Resource] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(resources(path, doc["items"]))
            continue
        api_version = str(doc.get("apiVersion") or "")
        if doc.get("kind") in KINDS and api_version.split("/")[0] == GROUP:
            out.append(Resource(str(path), str(doc["kind"]), doc))
    return out


def load_resources(paths: Iterable[str | Path]) -> list[Resource]:
    """Every remediation resource under the paths; raises InputError on the first bad file."""
    return [r for file in yaml_files(paths) for r in resources(file, load_documents(file))]


# -- the CRDs' schemas -------------------------------------------------------------------------


@dataclass(frozen=True)
class Crd:
    kind: str
    versions: Mapping[str, Mapping[str, Any]]  # served version -> openAPIV3Schema


def crds_dir() -> Path:
    env = os.environ.get(CRDS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "crds"


def load_crds(directory: Path | None = None) -> dict[str, Crd]:
    """The remediation CRDs by kind; raises InputError when they cannot be found."""
    directory = directory or crds_dir()
    if not directory.is_dir():
        raise InputError(f"{directory}: CRD directory not found; set {CRDS_ENV} to the operator's crds/ directory")
    crds: dict[str, Crd] = {}
    for file in yaml_files([directory]):
        for doc in load_documents(file):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc.get("spec") or {}
            if spec.get("group") != GROUP:
                continue
            versions = {
                f"{GROUP}/{v['name']}": v["schema"]["openAPIV3Schema"]
                for v in spec.get("versions") or []
                if v.get("served", True)
            }
            crds[spec["names"]["kind"]] = Crd(spec["names"]["kind"], versions)
    missing = [k for k in KINDS if k not in crds]
    if missing:
        raise InputError(f"{directory}: no CustomResourceDefinition for {', '.join(missing)}")
    return crds


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
_RULES: dict[str, Any] = {}


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_ok(value: Any, expected: str) -> bool:
    if isinstance(value, bool) and expected != "boolean":
        return False
    return isinstance(value, _TYPES.get(expected, (object,)))


def schema_problems(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Problems of one value against a structural schema, each ``field: problem``."""
    problems: list[str] = []
    expected = schema.get("type")
    if expected and not _type_ok(value, expected):
        return [f"{path}: Invalid value: {_show(value)}: must be of type {expected}"]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(_show(v) for v in schema["enum"])
        problems.append(f"{path}: Unsupported value: {_show(value)}: supported values: {allowed}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(
                f"{path}: Invalid value: {_show(value)}: should be at least {schema['minLength']} chars long"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: Too long: may not be longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: Invalid value: {_show(value)}: should match '{schema['pattern']}'")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: Invalid value: {value}: should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: Invalid value: {value}: should be less than or equal to {schema['maximum']}")
    if isinstance(value, dict):
        problems.extend(_object_problems(value, schema, path))
    if isinstance(value, list):
        problems.extend(_array_problems(value, schema, path))
    problems.extend(_rule_problems(value, schema, path))
    return problems


def _object_problems(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> list[str]:
    problems = [f"{_join(path, key)}: Required value" for key in schema.get("required") or [] if key not in value]
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        problems.append(f"{path}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
    properties: Mapping[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    free = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True or path == "metadata"
    for key, item in value.items():
        where = _join(path, key)
        if key in properties:
            problems.extend(schema_problems(item, properties[key], where))
        elif isinstance(extra, Mapping):
            problems.extend(schema_problems(item, extra, where))
        elif not free:
            problems.append(f"{where}: unknown field")
    return problems


def _array_problems(value: list[Any], schema: Mapping[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            problems.extend(schema_problems(item, items, f"{path}[{i}]"))
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            identity = _show({k: item.get(k) for k in keys})
            if identity in seen:
                problems.append(f"{path}[{i}]: Duplicate value: {identity}")
            seen.add(identity)
    return problems


def _rule_problems(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    """The CRD's CEL rules (x-kubernetes-validations), evaluated as the API server does."""
    problems: list[str] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        source = rule["rule"]
        if source not in _RULES:
            _RULES[source] = cel.compile(source)
        try:
            ok = _RULES[source].execute({"self": value})
        except Exception:  # a rule that cannot be evaluated on odd data: the schema errors say why
            continue
        if ok is False:
            problems.append(f"{path}: {rule.get('message') or f'failed rule: {source}'}")
    return problems


# -- validate ---------------------------------------------------------------------------------


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
        return [f"apiVersion: Unsupported value: {_show(api_version)}: supported values: {', '.join(crd.versions)}"]
    problems = schema_problems(body, crd.versions[api_version])
    if not resource.name:
        problems.insert(0, "metadata.name: Required value")
    if resource.kind == "RemediationPolicy":
        parsed = parse_policy(body, check)
        if isinstance(parsed, InvalidPolicy):
            _add_unless_said(problems, parsed.error)
    if resource.kind == "Incident" and (body.get("spec") or {}).get("approvals"):
        _add_unless_said(problems, APPROVALS_ON_CREATE)
    return problems


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

    def __init__(self, variables: Mapping[str, Any]) -> None:
        self.variables = variables
        self.warnings: list[str] = []

    def scalar(self, key: str, value: Any, url: bool) -> Any:
        if not expressions.is_template(value):
            return value
        marker = _runtime_marker(value)
        if marker:
            return marker
        try:
            return expressions.render({key: value}, self.variables, top=url)[key]
        except ValueError as err:
            self.warnings.append(f"{key}: {err}")
            return f"<cannot render: {err}>"

    def data(self, key: str, value: Any, url: bool = False) -> Any:
        if isinstance(value, Mapping):
            return {k: self.data(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(key, v) for v in value]
        return self.scalar(key, value, url)

    def secret(self, ref: Any) -> str:
        if isinstance(ref, Mapping) and ref.get("name") and ref.get("key"):
            name, key = self.scalar("name", ref["name"], False), self.scalar("key", ref["key"], False)
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
                shown = self.data(key, value, url=top and key in expressions.URL_KEYS)
                out.append(f"{indent}{key}: {shown if isinstance(shown, str) else _show(shown)}")
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
    if step.requires_approval and step.stage is not Stage.ESCALATE:
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
    renderer = _Renderer(variables)
    lines.extend(renderer.lines(step.params, pad))
    lines.extend(f"{pad}! would fail at run time: cannot render {w}" for w in renderer.warnings)
    return lines


def _policy_lines(incident: Incident, policy: Policy) -> list[str]:
    severity = incident.severity or policy.severity or DEFAULT_SEVERITY
    source = "the incident's" if incident.severity else "the policy's" if policy.severity else "the default"
    variables = {"incident": incident.view(severity), "steps": {}, "findings": []}
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


def plan(
    incident_body: Mapping[str, Any], policy_bodies: Iterable[Mapping[str, Any]], check: ParamValidator
) -> tuple[list[str], bool]:
    """What the operator would do with the incident, as lines, and whether a usable policy matched."""
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
    return [*lines, *_policy_lines(incident, chosen)], True


def with_namespace(body: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The object as ``kubectl apply -n NAMESPACE`` would create it when it names none."""
    meta_ = dict(body.get("metadata") or {})
    meta_.setdefault("namespace", namespace)
    return {**body, "metadata": meta_}


def iter_kind(found: Iterable[Resource], kind: str) -> Iterator[Resource]:
    return (r for r in found if r.kind == kind)
