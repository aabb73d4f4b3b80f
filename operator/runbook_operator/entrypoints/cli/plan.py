"""``runbook-operator plan``: which policy an incident would get, and the steps it would run, offline."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add(sub: Any) -> None:
    plan = sub.add_parser("plan", help="show offline which policy an incident would get and the steps it would run")
    plan.add_argument("incident", metavar="INCIDENT.yaml", help="a file with one or more Incidents")
    plan.add_argument(
        "--policies",
        action="append",
        required=True,
        metavar="DIR",
        help="RemediationPolicy files or directories; RemediationBudgets in them say what would be throttled "
        "(with their ledgers, from kubectl get rbud -o yaml, whether it would be now)",
    )
    plan.add_argument(
        "-n", "--namespace", default="default", help="namespace for objects that name none (default: default)"
    )
    plan.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runbook_operator import gitops
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.domain.budgets import InvalidBudget, parse_budget

    try:
        incidents = list(gitops.iter_kind(gitops.load_resources([args.incident]), "Incident"))
        resources = gitops.load_resources(args.policies)
        policies = list(gitops.iter_kind(resources, "RemediationPolicy"))
        budget_docs = list(gitops.iter_kind(resources, "RemediationBudget"))
    except gitops.InputError as err:
        print(f"runbook-operator plan: {err}", file=sys.stderr)
        return 2
    if not incidents:
        print(f"runbook-operator plan: {args.incident}: no Incident found", file=sys.stderr)
        return 2
    check = default_registry().check
    bodies = [gitops.with_namespace(p.body, args.namespace) for p in policies]
    budgets = []
    for doc in budget_docs:
        budget = parse_budget(gitops.with_namespace(doc.body, args.namespace))
        if isinstance(budget, InvalidBudget):
            print(f"runbook-operator plan: budget {budget.namespace}/{budget.name}: {budget.error}", file=sys.stderr)
            return 2
        budgets.append(budget)
    ok = True
    for i, incident in enumerate(incidents):
        body = gitops.with_namespace(incident.body, args.namespace)
        lines, matched = gitops.plan(body, bodies, check, budgets)
        print(("\n" if i else "") + "\n".join(lines))
        ok = ok and matched
    return 0 if ok else 1
