"""The on-call commands: ``approve``, ``ack`` and ``resolve``, run by people as themselves.

Also installed as the kubectl plugin ``kubectl-runbook`` (``kubectl runbook approve …``).
Who you are comes from the API server (a SelfSubjectReview), never from a flag; the
admission policy in ``manifests/consent`` checks it again. ``approve`` shows the exact
request the operator made (action, round, rendered parameters, digest), asks before it
agrees, and appends one approval naming that request's round and nonce with a JSON patch.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import kubernetes

from runbook_operator.domain import consent
from runbook_operator.domain.resources import GROUP, INCIDENTS, VERSION

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")


class Refused(Exception):
    """Said to the user as one line; the command exits 1."""


@dataclass(frozen=True)
class Connection:
    """Which cluster and namespace a command acts in, and as whom the client authenticates."""

    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    as_user: str | None = None
    as_group: str | None = None


def api_client(target: Connection) -> tuple[kubernetes.client.ApiClient, str]:
    """A client for the kubeconfig (or in-cluster config) and the namespace to use."""
    config_file = target.kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        client = kubernetes.config.new_client_from_config(config_file=config_file, context=target.context)  # type: ignore[no-untyped-call]
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=config_file)  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c.get("name") == target.context), active) if target.context else active
        default = (chosen or {}).get("context", {}).get("namespace") or "default"
    except (kubernetes.config.ConfigException, OSError):
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        client, default = kubernetes.client.ApiClient(), "default"
    if target.as_user:  # impersonation, as kubectl --as/--as-group (the API server checks the right to it)
        client.set_default_header("Impersonate-User", target.as_user)
    if target.as_group:
        client.set_default_header("Impersonate-Group", target.as_group)
    return client, target.namespace or default


def whoami(client: kubernetes.client.ApiClient) -> str:
    """The authenticated username, as the API server sees this client."""
    try:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview()
        )
    except kubernetes.client.ApiException as err:
        raise Refused(f"cannot tell who you are (SelfSubjectReview): {api_message(err)}") from None
    username = review.status.user_info.username if review.status and review.status.user_info else None
    if not username:
        raise Refused("the API server did not say who you are (SelfSubjectReview has no username)")
    return str(username)


def api_message(err: kubernetes.client.ApiException) -> str:
    """The API server's own message (an admission policy's refusal says which rule and what to do)."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, Mapping) else None
    text = str(message or err.reason or err)
    return " ".join(text.split())


class Incidents:
    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self._api, self.namespace = kubernetes.client.CustomObjectsApi(client), namespace

    def get(self, name: str) -> dict[str, Any]:
        try:
            found: Any = self._api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, INCIDENTS, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                raise Refused(f"incident {self.namespace}/{name} not found") from None
            raise Refused(f"reading incident {self.namespace}/{name}: {api_message(err)}") from None
        if not isinstance(found, dict):
            raise Refused(f"reading incident {self.namespace}/{name}: the API server answered no object")
        return found

    def patch(self, name: str, patch: Any, what: str) -> None:
        """A JSON patch (a list) or a merge patch (a dict); a refusal becomes one line."""
        kind = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        try:
            self._api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, INCIDENTS, name, patch, _content_type=kind
            )
        except kubernetes.client.ApiException as err:
            raise Refused(f"{what} refused by the API server: {api_message(err)}") from None


def waiting_step(incident: Mapping[str, Any], step: str) -> Mapping[str, Any]:
    """The record of ``step`` waiting for approval, with its open request; else a refusal that says why."""
    status = incident.get("status") or {}
    records = [s for s in status.get("steps") or () if isinstance(s, Mapping)]
    found = next((s for s in records if s.get("name") == step and s.get("state") == "AwaitingApproval"), None)
    meta = incident.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    if status.get("phase") != "AwaitingApproval":  # a request left by an incident that resolved answers nothing
        raise Refused(f"incident {where} waits for no approval: its phase is {status.get('phase') or 'not set yet'}")
    if found is None:
        others = sorted({str(s.get("name")) for s in records if s.get("state") == "AwaitingApproval"})
        hint = f"; waiting: {', '.join(others)}" if others else ""
        raise Refused(f"step {step!r} of incident {where} does not wait for approval{hint}")
    request = found.get("approvalRequest")
    if not isinstance(request, Mapping) or not request.get("nonce"):
        raise Refused(
            f"step {step!r} of incident {where} has no approval request yet: the operator opens one "
            "(round, parameters and nonce) when it looks at the incident again; try again in a moment"
        )
    return found


def describe(incident: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """What approving means, every value escaped: incident text never reaches the terminal raw."""
    meta, spec, status = incident.get("metadata") or {}, incident.get("spec") or {}, incident.get("status") or {}
    request = record["approvalRequest"]
    params = request.get("parameters") or {}
    lines = [
        f"Incident {meta.get('namespace')}/{meta.get('name')}: alert {_shown(spec.get('alert'))}, "
        f"severity {status.get('severity') or spec.get('severity') or '-'}, phase {status.get('phase')}",
        f"Step {record.get('name')} ({record.get('stage')}, round {record.get('attempt')}): {record.get('action')}",
        "Parameters, as the operator rendered them (Secrets are named, never read):",
    ]
    lines += [f"  {_key(key)}: {_shown(value)}" for key, value in params.items()] or ["  (none)"]
    if consent.digest(str(record.get("action")), params) != request.get("digest"):
        lines.append(
            "  (these are not all the parameters the digest below covers: some were too large to keep in status; "
            "`runbook-operator plan` renders them all)"
        )
    lines.append(
        f"Digest {request.get('digest')}, nonce {request.get('nonce')}, requested at {request.get('requestedAt')}"
    )
    return lines


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else _shown(key)


def _shown(value: Any) -> str:
    """JSON with every control and non-ASCII character escaped (no terminal escapes, no bidi tricks)."""
    return json.dumps(value, ensure_ascii=True, sort_keys=True, default=str)


def approve(
    incidents: Incidents,
    who: str,
    name: str,
    step: str,
    confirm: Callable[[str], bool] | None,
    out: TextIO | None = None,
) -> None:
    """Append an approval of the open request of ``step``, as ``who``; ``confirm`` None: do not ask."""
    incident = incidents.get(name)
    record = waiting_step(incident, step)
    request = record["approvalRequest"]
    print("\n".join(describe(incident, record)), file=out)
    if confirm is not None and not confirm(f"Approve this as {who}? [y/N] "):
        raise Refused("not approved")
    round_, nonce = int(record.get("attempt") or 0), str(request["nonce"])
    listed = isinstance((incident.get("spec") or {}).get("approvals"), list)
    patch = consent.append_patch(step, round_, nonce, who, list_exists=listed)
    incidents.patch(name, patch, "the approval was")
    print(f"approved: step {step} (round {round_}, nonce {nonce}) of {incidents.namespace}/{name} by {who}", file=out)


def acknowledge(incidents: Incidents, who: str, name: str, out: TextIO | None = None) -> None:
    before = (incidents.get(name).get("spec") or {}).get("acknowledgedBy")
    incidents.patch(name, {"spec": {"acknowledgedBy": who}}, "the acknowledgement was")
    was = f" (was: {_shown(before)})" if before and before != who else ""
    print(f"acknowledged: {incidents.namespace}/{name} by {who}{was}", file=out)


def resolve(incidents: Incidents, name: str, out: TextIO | None = None) -> None:
    incidents.get(name)
    incidents.patch(name, {"spec": {"resolved": True}}, "resolving was")
    print(f"resolved: {incidents.namespace}/{name} (spec.resolved: true; pending work stops)", file=out)


def ask(question: str) -> bool:
    """A yes from the terminal; no terminal means no (use --yes in scripts)."""
    if not sys.stdin.isatty():
        raise Refused("not approved: no terminal to ask on (pass --yes to approve without asking)")
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
