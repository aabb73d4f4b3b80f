"""``runbook-operator stats``: per-alert counts, MTTA and MTTR from the incident archive."""

from __future__ import annotations

import argparse
import os
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
    import asyncio
    from datetime import timedelta

    from runbook_operator.adapters.archive import AlertStats, Archive, stats_table

    dsn = os.environ.get(args.dsn_env)
    if not dsn:
        print(f"runbook-operator stats: ${args.dsn_env} is not set (the archive's PostgreSQL DSN)", file=sys.stderr)
        return 2
    archive = Archive(dsn)

    async def query() -> list[AlertStats]:
        try:
            return await archive.stats(timedelta(seconds=args.since))
        finally:
            await archive.close()

    try:
        rows = asyncio.run(query())
    except Exception as err:  # never the DSN: only where, and the redacted error
        print(f"runbook-operator stats: archive {archive.where}: {archive.redact(err)}", file=sys.stderr)
        return 1
    print(stats_table(rows))
    return 0
