"""Loading a GitOps repository offline: YAML documents (read by :mod:`.loader`, within its
limits), the CRDs, and the structural-schema and CEL-rule checks of the CRDs'
``openAPIV3Schema`` (what the API server checks on apply)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cel

from runbook_operator.domain.resources import GROUP
from runbook_operator.gitops.loader import InputError, load_documents

KINDS = ("RemediationPolicy", "Incident", "RemediationBudget")
KUSTOMIZATION_FILES = frozenset({"kustomization.yaml", "kustomization.yml", "Kustomization"})
CRDS_ENV = "RUNBOOK_OPERATOR_CRDS"


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
    """The YAML (and JSON) files named or found (recursively, sorted) under the paths, as
    ``kubectl apply -f DIR`` takes them; raises InputError."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.suffix in (".yaml", ".yml", ".json")
                and p.is_file()
                and p.name not in KUSTOMIZATION_FILES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{raw}: no such file or directory")
    return found


def resources(path: Path, documents: Iterable[Any]) -> list[Resource]:
    """The Incidents, RemediationPolicies and RemediationBudgets among the documents (also inside
    ``kind: List``)."""
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
    return Path(env) if env else Path(__file__).resolve().parents[3] / "crds"


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


def show(value: Any) -> str:
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
        return [f"{path}: Invalid value: {show(value)}: must be of type {expected}"]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(show(v) for v in schema["enum"])
        problems.append(f"{path}: Unsupported value: {show(value)}: supported values: {allowed}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(
                f"{path}: Invalid value: {show(value)}: should be at least {schema['minLength']} chars long"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: Too long: may not be longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: Invalid value: {show(value)}: should match '{schema['pattern']}'")
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
            identity = show({k: item.get(k) for k in keys})
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


def with_namespace(body: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The object as ``kubectl apply -n NAMESPACE`` would create it when it names none."""
    meta_ = dict(body.get("metadata") or {})
    meta_.setdefault("namespace", namespace)
    return {**body, "metadata": meta_}


def iter_kind(found: Iterable[Resource], kind: str) -> Iterator[Resource]:
    return (r for r in found if r.kind == kind)
