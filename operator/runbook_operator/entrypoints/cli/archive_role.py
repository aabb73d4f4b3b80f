"""``runbook-operator archive-role NAME``: a role that may read the incident archive and nothing
else, for ``replay --archive`` in a pull request's CI (grant it to that job's database user)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runbook_operator.entrypoints.cli import arguments


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
    from runbook_operator.adapters.archive import Archive, check_role

    try:
        check_role(args.name)  # before any connection
    except ValueError as err:
        print(f"runbook-operator archive-role: {err}", file=sys.stderr)
        return 2

    async def grant(archive: Archive) -> bool:
        await archive.migrate()  # the tables must exist before they can be granted
        return await archive.grant_read_only(args.name)

    try:
        created = arguments.on_archive(args.dsn_env, grant)
    except arguments.CommandError as err:
        print(f"runbook-operator archive-role: {err.message}", file=sys.stderr)
        return err.code
    said = "created" if created else "exists; its grants made again"
    print(f"role {args.name} {said}: SELECT on the archive's tables, nothing else. "
          f"Let CI's user in with: GRANT {args.name} TO <ci_user>;")  # fmt: skip
    return 0
