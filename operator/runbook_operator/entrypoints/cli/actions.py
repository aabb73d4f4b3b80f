"""``runbook-operator actions``: the action catalog, as text or as docs/actions.md."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add(sub: Any) -> None:
    actions = sub.add_parser("actions", help="list the action catalog with parameters")
    actions.add_argument("--markdown", action="store_true", help="as the reference page docs/actions.md")
    actions.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runbook_operator.actions import reference
    from runbook_operator.actions.catalog import default_registry

    registry = default_registry()
    sys.stdout.write(reference.markdown(registry) if args.markdown else reference.text(registry))
    return 0
