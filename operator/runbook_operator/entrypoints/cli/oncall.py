"""The on-call commands: ``approve``, ``ack`` and ``resolve``, run by people as themselves.

Also installed as the kubectl plugin ``kubectl-runbook`` (``kubectl runbook approve …``).
Who you are comes from the API server (a SelfSubjectReview), never from a flag; the
admission policy in ``manifests/consent`` checks it again. ``approve`` shows the exact
request the operator made (action, round, rendered parameters, digest), asks before it
agrees, and appends one approval naming that request's round and nonce with a JSON patch."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from runbook_operator.adapters.kube import Incidents, Refused, whoami
from runbook_operator.domain import consent
from runbook_operator.entrypoints.cli.arguments import client

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")


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
    lines.append(
        f"Digest {request.get('digest')}, nonce {request.get('nonce')}, requested at {request.get('requestedAt')}"
    )
    return lines


def shown_differs(record: Mapping[str, Any]) -> str | None:
    """Why the action and parameters shown are not what the request's digest covers, if they are not.

    The digest is the operator's; the parameters beside it are only status text. Approving
    means approving the digest, so the command agrees only to what it can show in full."""
    request = record["approvalRequest"]
    params = request.get("parameters") or {}
    if consent.digest(str(record.get("action")), params) == request.get("digest"):
        return None
    if params.get("truncated") is True:
        return (
            "some parameters were too large to keep in status, so what is shown is not all the digest covers; "
            "`runbook-operator plan` renders them all, and the raw patch in the incident's events approves"
        )
    return (
        "the action and parameters shown do not match the request's digest: the request in status was changed "
        "by someone other than the operator; ask who may write incidents/status"
    )


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
    unverified = shown_differs(record)
    if unverified:
        raise Refused(f"not approved: {unverified}")
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


def add(sub: Any, cluster: argparse.ArgumentParser) -> None:
    approving = sub.add_parser(
        "approve",
        parents=[cluster],
        help="approve the step an incident waits for, as yourself (shows the action and parameters, then asks)",
    )
    approving.add_argument("name", metavar="INCIDENT")
    approving.add_argument("step", metavar="STEP", help="the step waiting in AwaitingApproval")
    approving.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    approving.set_defaults(func=run)
    acking = sub.add_parser("ack", parents=[cluster], help="acknowledge an incident as yourself (spec.acknowledgedBy)")
    acking.add_argument("name", metavar="INCIDENT")
    acking.set_defaults(func=run)
    resolving = sub.add_parser("resolve", parents=[cluster], help="mark an incident over (spec.resolved: true)")
    resolving.add_argument("name", metavar="INCIDENT")
    resolving.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """approve, ack, resolve: as the authenticated caller; a refusal is one line on stderr, exit 1."""
    try:
        api, namespace = client(args)
        incidents = Incidents(api, namespace)
        if args.command == "approve":
            confirm = None if args.yes else ask
            approve(incidents, whoami(api), args.name, args.step, confirm)
        elif args.command == "ack":
            acknowledge(incidents, whoami(api), args.name)
        else:
            resolve(incidents, args.name)
    except Refused as err:
        print(f"{args.prog} {args.command}: {err}", file=sys.stderr)
        return 1
    return 0
