"""``runbook-operator stats``: per-alert counts, MTTA and MTTR from the incident archive."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runbook_operator.entrypoints.cli import arguments as types


def add(sub: Any) -> None:
    stats = sub.add_parser("stats", help="per-alert incident counts, MTTA and MTTR from the incident archive")
    stats.add_argument(
        "--since", type=types.since, default=types.since("7d"), metavar="DURATION", help="e.g. 7d (default), 12h"
    )
    stats.add_argument(
        "--dsn-env", default="RUNBOOK_ARCHIVE_DSN", metavar="VAR", help="env var with the archive's PostgreSQL DSN"
    )
    stats.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from runbook_operator.adapters.archive import stats_table

    try:
        rows = types.on_archive(args.dsn_env, lambda archive: archive.stats(timedelta(seconds=args.since)))
    except types.CommandError as err:
        print(f"runbook-operator stats: {err.message}", file=sys.stderr)
        return err.code
    print(stats_table(rows))
    return 0
