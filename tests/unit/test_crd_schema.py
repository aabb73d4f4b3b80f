"""One source of truth for the API: the CRDs in crds/ against the types that read and write them.

Status is written by the operator from ``domain.status.Status`` (and ``Condition``), so its
schema is derived from those dataclasses here and compared both ways: every field, its JSON
type, and the enums the types define. Spec is read by the core into differently named
types, so each spec field is mapped to the attribute it becomes (or to why it is not read)
and the table is held against both sides. A field added to one side only fails here, not
in an end-to-end test, if at all.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_operator.domain import status as status_module
from runbook_operator.domain.conditions import Condition
from runbook_operator.domain.model import SEVERITIES, Incident, Stage, Step
from runbook_operator.domain.status import Phase, Status, StepState

ROOT = Path(__file__).resolve().parents[2]
JSON = {str: "string", int: "integer", bool: "boolean", float: "number"}
CONDITION_STATUS = ("True", "False", "Unknown")
# fields typed as plain strings whose values an enum of the domain names
ENUMS: dict[str, tuple[str, ...]] = {
    "phase": tuple(Phase),
    "steps[].stage": tuple(Stage),
    "steps[].state": tuple(StepState),
    "conditions[].status": CONDITION_STATUS,
}


def schema(kind: str, part: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"remediation.ishchat.io_{kind}.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"]["properties"][part])


def derived(kind: type, path: str = "") -> dict[str, Any]:
    """The JSON schema shape a dataclass is written as: type, properties, items, enums."""
    hints = typing.get_type_hints(kind, vars(status_module))
    return {
        "type": "object",
        "properties": {f.name: of(hints[f.name], f"{path}{f.name}") for f in dataclasses.fields(kind)},
    }


def of(hint: Any, path: str) -> dict[str, Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:  # X | None
        (hint,) = args
        return of(hint, path)
    origin = typing.get_origin(hint)
    if origin is tuple:  # tuple[X, ...]
        return {"type": "array", "items": of(args[0], f"{path}[].")}
    if origin is Mapping or origin is dict:
        value = args[1]
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": of(value, path)}
    if dataclasses.is_dataclass(hint):
        return derived(hint, path if path.endswith(".") else f"{path}.")  # type: ignore[arg-type]
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return {"type": "string", "enum": [m.value for m in hint]}
    found: dict[str, Any] = {"type": JSON[hint]}
    if path.rstrip(".") in ENUMS:
        found["enum"] = [str(v) for v in ENUMS[path.rstrip(".")]]
    return found


def shape(node: Mapping[str, Any]) -> dict[str, Any]:
    """What of a CRD schema node the comparison is about (not descriptions, formats or limits)."""
    kept: dict[str, Any] = {"type": node["type"]}
    if "enum" in node:
        kept["enum"] = list(node["enum"])
    if node.get("x-kubernetes-preserve-unknown-fields"):
        kept["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in node:
        kept["properties"] = {k: shape(v) for k, v in node["properties"].items()}
    if "items" in node:
        kept["items"] = shape(node["items"])
    if isinstance(node.get("additionalProperties"), Mapping):
        kept["additionalProperties"] = shape(node["additionalProperties"])
    return kept


def differences(crd: Any, types_: Any, path: str = "status") -> list[str]:
    """Every place the two shapes differ, named by its path."""
    if not isinstance(crd, Mapping) or not isinstance(types_, Mapping):
        return [] if crd == types_ else [f"{path}: CRD {crd!r}, types {types_!r}"]
    found = []
    for key in sorted(set(crd) | set(types_)):
        where = f"{path}.{key}" if key not in ("properties", "items", "additionalProperties") else path
        if key == "items":
            where += "[]"
        if key not in types_:
            found.append(f"{where}: in the CRD, not in the types ({key})")
        elif key not in crd:
            found.append(f"{where}: in the types, not in the CRD ({key})")
        else:
            found += differences(crd[key], types_[key], where)
    return found


def test_the_incident_status_schema_is_the_status_types() -> None:
    types_ = derived(Status)
    types_["properties"]["conditions"] = {"type": "array", "items": derived(Condition, "conditions[].")}
    types_["properties"]["conditions"]["items"]["properties"]["status"]["enum"] = list(CONDITION_STATUS)
    assert differences(shape(schema("incidents", "status")), types_) == []


def test_the_policy_status_schema_is_what_the_operator_writes() -> None:
    """observedGeneration and the Ready condition (handlers.policy_event): nothing else."""
    written = {"type": "object", "properties": {"observedGeneration": {"type": "integer"},
                                                "conditions": {"type": "array", "items": derived(Condition)}}}  # fmt: skip
    written["properties"]["conditions"]["items"]["properties"]["status"]["enum"] = list(CONDITION_STATUS)
    assert differences(shape(schema("remediationpolicies", "status")), written) == []


# spec field -> the Incident attribute it becomes, or why the core does not read it
INCIDENT_SPEC = {
    "alert": "alert", "severity": "severity", "summary": "summary", "description": "description",
    "labels": "labels", "target": "target", "policyRef": "policy_ref", "dryRun": "dry_run", "suspend": "suspend",
    "acknowledgedBy": "acknowledged_by", "approvals": "approvals", "resolved": "resolved",
    "source": None,  # where the alert came from: the intake writes it, people and report read it
}  # fmt: skip
FROM_METADATA = {"namespace", "name", "generation", "uid", "created"}
WHOLE = {"spec"}  # the spec as applied, kept whole for the archive
# a step's spec field -> the Step attribute it becomes
STEP_SPEC = {
    "name": "name", "action": "action", "with": "params", "when": "when", "timeout": "timeout", "retries": "retries",
    "backoff": "backoff", "continueOnFailure": "continue_on_failure", "requiresApproval": "requires_approval",
}  # fmt: skip
FROM_THE_ACTION = {"stage", "destructive", "read_only", "languages"}  # where it stands, and what its action is


def test_every_incident_spec_field_becomes_an_incident_attribute_and_back() -> None:
    spec = schema("incidents", "spec")["properties"]
    assert set(spec) == set(INCIDENT_SPEC)
    attributes = {f.name for f in dataclasses.fields(Incident)}
    assert {a for a in INCIDENT_SPEC.values() if a} == attributes - FROM_METADATA - WHOLE
    assert tuple(spec["severity"]["enum"]) == SEVERITIES


@pytest.mark.parametrize("stage", ["diagnose", "remediate", "verify"])
def test_every_step_field_becomes_a_step_attribute_and_back(stage: str) -> None:
    step = schema("remediationpolicies", "spec")["properties"][stage]["items"]["properties"]
    assert set(step) == set(STEP_SPEC)
    assert set(STEP_SPEC.values()) == {f.name for f in dataclasses.fields(Step)} - FROM_THE_ACTION


def test_the_policy_severities_are_the_domains() -> None:
    spec = schema("remediationpolicies", "spec")["properties"]
    assert tuple(spec["severity"]["enum"]) == SEVERITIES
    assert tuple(spec["match"]["properties"]["severities"]["items"]["enum"]) == SEVERITIES


def test_a_field_on_one_side_only_is_named() -> None:
    """The check itself: a status field the types gain and a CRD field they lack are both found."""
    types_ = derived(Status)
    types_["properties"]["conditions"] = {"type": "array", "items": derived(Condition, "conditions[].")}
    types_["properties"]["conditions"]["items"]["properties"]["status"]["enum"] = list(CONDITION_STATUS)
    crd = shape(schema("incidents", "status"))
    crd["properties"]["steps"]["items"]["properties"].pop("update")
    crd["properties"]["extra"] = {"type": "string"}
    crd["properties"]["attempts"] = {"type": "string"}
    assert differences(crd, types_) == [
        "status.attempts.type: CRD 'string', types 'integer'",
        "status.extra: in the CRD, not in the types (extra)",
        "status.steps[].update: in the types, not in the CRD (update)",
    ]
