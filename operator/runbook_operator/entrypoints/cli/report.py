"""``runbook-operator report`` (and ``kubectl runbook report``): an Incident's post-incident report in Markdown."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runbook_operator.entrypoints.cli.arguments import client


def add(sub: Any, cluster: argparse.ArgumentParser) -> None:
    report = sub.add_parser("report", parents=[cluster], help="render a post-incident report (Markdown) of an Incident")
    report.add_argument("name", nargs="?", metavar="NAME", help="the Incident to read from the cluster")
    report.add_argument(
        "-f",
        "--filename",
        metavar="FILE",
        help="render offline from YAML or JSON (kubectl get inc NAME -o yaml); - is stdin",
    )
    report.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    report.add_argument(
        "--export", metavar="FILE",
        help="also write the Incident (spec and status) to FILE as YAML: what `replay --incidents` reads",
    )  # fmt: skip
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runbook_operator.domain import report

    if args.name is None and args.filename is None:
        print(f"{args.prog} report: give an incident NAME or -f FILE", file=sys.stderr)
        return 2
    try:
        if args.filename is not None:
            pairs = _report_from_file(args.filename, args.name)
        else:
            pairs = [_report_from_cluster(args)]
    except LookupError as err:
        print(f"{args.prog} report: {err}", file=sys.stderr)
        return 1
    if args.export:
        _export(args.export, [body for body, _ in pairs])
    text = "\n---\n\n".join(report.render(body, events, args.export) for body, events in pairs)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


EXPORTED_METADATA = ("name", "namespace", "uid", "generation", "creationTimestamp", "labels", "annotations")


def _export(path: str, bodies: list[dict[str, Any]]) -> None:
    """The Incidents as one YAML List (what ``kubectl get inc -o yaml`` gives, less managedFields)."""
    import yaml

    items = [
        {
            "apiVersion": body.get("apiVersion", "remediation.ishchat.io/v1alpha1"),
            "kind": "Incident",
            "metadata": {k: v for k, v in (body.get("metadata") or {}).items() if k in EXPORTED_METADATA},
            "spec": body.get("spec") or {},
            "status": body.get("status") or {},
        }
        for body in bodies
    ]
    with open(path, "w", encoding="utf-8") as out:
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, out, sort_keys=False)


def _report_from_cluster(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Incident and its Events, read with the current kubeconfig (or in-cluster config)."""
    from runbook_operator.adapters.kube import Incidents, Refused

    try:
        incidents = Incidents(*client(args))
        return incidents.get(args.name), incidents.events(args.name)
    except Refused as err:
        raise LookupError(str(err)) from None


def _report_from_file(path: str, name: str | None) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Incidents (and any Events about them) from YAML or JSON: one object, several, or a List.
    Read as validate and plan read files: the one loader, with its limits (gitops.loader)."""
    from runbook_operator.gitops.loader import InputError, load_documents, load_stream

    try:
        docs = [d for d in (load_stream() if path == "-" else load_documents(path)) if isinstance(d, dict)]
    except InputError as err:
        raise LookupError(str(err)) from None
    listed = [d.get("items") if str(d.get("kind")).endswith("List") else [d] for d in docs]
    objects = [item for items in listed if isinstance(items, list) for item in items if isinstance(item, dict)]
    incidents = [o for o in objects if o.get("kind") == "Incident"]

    def field(obj: dict[str, Any], key: str) -> dict[str, Any]:
        value = obj.get(key)
        return value if isinstance(value, dict) else {}

    if name is not None:
        incidents = [o for o in incidents if field(o, "metadata").get("name") == name]
    if not incidents:
        raise LookupError(f"{path}: no Incident" + (f" named {name}" if name else "") + " found")

    def about(incident: dict[str, Any], event: dict[str, Any]) -> bool:
        involved, meta = field(event, "involvedObject"), field(incident, "metadata")
        return involved.get("kind") == "Incident" and involved.get("name") == meta.get("name")

    events = [o for o in objects if o.get("kind") == "Event"]
    return [(i, [e for e in events if about(i, e)]) for i in incidents]
