"""What several commands share: argument types, the cluster options of the on-call commands,
and a run on the incident archive."""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from runbook_operator.adapters.archive import Archive

T = TypeVar("T")


class CommandError(Exception):
    """A command cannot go on: ``message`` goes to stderr as one line, ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def on_archive(dsn_env: str, work: Callable[[Archive], Awaitable[T]]) -> T:
    """``work`` on the archive whose DSN is in ``$dsn_env``, then the archive closed. No DSN is a
    CommandError (2); a failure of the database another (1), saying where but never the DSN."""
    import asyncio
    import os

    from runbook_operator.adapters.archive import Archive

    dsn = os.environ.get(dsn_env)
    if not dsn:
        raise CommandError(f"${dsn_env} is not set (the archive's PostgreSQL DSN)", 2)
    archive = Archive(dsn)

    async def go() -> T:
        try:
            return await work(archive)
        finally:
            await archive.close()

    try:
        return asyncio.run(go())
    except Exception as err:  # never the DSN: where, and the redacted error
        raise CommandError(f"archive {archive.where}: {archive.redact(err)}", 1) from None


def duration(text: str) -> float:
    from runbook_operator.domain.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def ttl(text: str) -> float | None:
    return None if text == "never" else duration(text)


def since(text: str) -> float:
    """A duration for ``stats``: parse_duration's units plus ``d`` for days (7d, 1d12h)."""
    from runbook_operator.domain.durations import parse_duration

    match = re.fullmatch(r"(?:(\d+)d)?(.*)", text or "", re.DOTALL)
    days, rest = match.groups() if match else (None, text)
    try:
        seconds = int(days or 0) * 86400.0 + (parse_duration(rest) if rest or not days else 0.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected e.g. 7d, 12h, 1d12h, 30m") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than zero")
    return seconds


def cluster_options() -> argparse.ArgumentParser:
    """-n, --kubeconfig, --context, --as, --as-group: the caller's way to the cluster, as kubectl's."""
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("-n", "--namespace", help="the incident's namespace (default: the kubeconfig context's)")
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    cluster.add_argument("--context", help="kubeconfig context (default: the current one)")
    cluster.add_argument("--as", dest="as_user", metavar="USER", help="impersonate USER, as kubectl --as")
    cluster.add_argument(
        "--as-group", dest="as_group", metavar="GROUP", help="impersonate GROUP, as kubectl --as-group"
    )
    return cluster


def client(args: argparse.Namespace) -> Any:
    """A client as the caller (kubeconfig, context, impersonation) and the namespace to act in."""
    from runbook_operator.adapters import kube

    return kube.api_client(kube.Connection(args.namespace, args.kubeconfig, args.context, args.as_user, args.as_group))
