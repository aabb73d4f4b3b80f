"""What several commands share: argument types and the cluster options of the on-call commands."""

from __future__ import annotations

import argparse
import re
from typing import Any


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
