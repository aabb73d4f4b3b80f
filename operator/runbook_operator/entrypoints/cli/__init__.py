"""``runbook-operator`` and ``kubectl runbook``: one module per command, each with ``add`` (its
arguments) and ``run`` (what it does); this module puts the parsers together."""

from __future__ import annotations

import argparse
import sys

from runbook_operator import __version__
from runbook_operator.entrypoints.cli import actions, archive_role, oncall, plan, replay, report, run, stats, validate
from runbook_operator.entrypoints.cli.arguments import cluster_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runbook-operator", description="The ISH Chat incident runbook as a Kubernetes operator."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (run, stats, actions, validate, plan, replay, archive_role):
        command.add(sub)
    _add_oncall_commands(sub)
    parser.set_defaults(prog="runbook-operator")
    return parser


def _add_oncall_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands people run against the cluster as themselves (also the kubectl plugin's)."""
    cluster = cluster_options()
    oncall.add(sub, cluster)
    report.add(sub, cluster)


def build_plugin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl runbook", description="runbook-operator's on-call commands, as a kubectl plugin."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_oncall_commands(parser.add_subparsers(dest="command", required=True))
    parser.set_defaults(prog="kubectl runbook")
    return parser


def kubectl_plugin(argv: list[str] | None = None) -> int:
    """``kubectl-runbook``: kubectl runs it for ``kubectl runbook ...`` (its plugin convention)."""
    args = build_plugin_parser().parse_args(argv)
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
