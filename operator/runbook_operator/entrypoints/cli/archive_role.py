"""``runbook-operator archive-role NAME``: a role that may read the incident archive and nothing
else, for ``replay --archive`` in a pull request's CI (grant it to that job's database user)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add(sub: Any) -> None:
    role = sub.add_parser(
        "archive-role",
        help="create a read-only role on the incident archive, for replays in CI (run with an admin DSN)",
    )
    role.add_argument("name", metavar="ROLE", help="the role to create (NOLOGIN), e.g. runbook_replay")
    role.add_argument(
        "--dsn-env", default="RUNBOOK_ARCHIVE_DSN", metavar="VAR",
        help="env var with a DSN allowed to create roles and grant on the archive's tables",
    )  # fmt: skip
    role.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from runbook_operator.adapters.archive import Archive

    dsn = os.environ.get(args.dsn_env)
    if not dsn:
        print(f"runbook-operator archive-role: ${args.dsn_env} is not set", file=sys.stderr)
        return 2
    archive = Archive(dsn)

    async def grant() -> bool:
        try:
            await archive.migrate()  # the tables must exist before they can be granted
            return await archive.grant_read_only(args.name)
        finally:
            await archive.close()

    try:
        created = asyncio.run(grant())
    except ValueError as err:
        print(f"runbook-operator archive-role: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # never the DSN: where, and the redacted error
        print(f"runbook-operator archive-role: archive {archive.where}: {archive.redact(err)}", file=sys.stderr)
        return 1
    said = "created" if created else "exists; its grants made again"
    print(f"role {args.name} {said}: SELECT on the archive's tables, nothing else. "
          f"Let CI's user in with: GRANT {args.name} TO <ci_user>;")  # fmt: skip
    return 0
