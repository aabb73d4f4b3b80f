"""``runbook-operator validate``: policies and incidents checked offline (CRD schema and policy rules)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add(sub: Any) -> None:
    validate = sub.add_parser(
        "validate", help="check RemediationPolicy and Incident files offline (CRD schema and policy rules)"
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories (searched recursively)")
    validate.add_argument(
        "--crds", metavar="DIR", help="directory of the CRDs (default: $RUNBOOK_OPERATOR_CRDS, else the repo's crds/)"
    )
    validate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runbook_operator import gitops
    from runbook_operator.actions.catalog import default_registry

    try:
        crds = gitops.load_crds(Path(args.crds) if args.crds else None)
    except gitops.InputError as err:
        print(f"runbook-operator validate: {err}", file=sys.stderr)
        return 2
    report = gitops.validate(args.paths, crds, default_registry().check)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return report.exit_code
