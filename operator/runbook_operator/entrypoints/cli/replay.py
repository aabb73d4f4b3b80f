"""``runbook-operator replay``: what a policy change would have done to incidents that happened.

Exit codes: 0, nothing ``--fail-on`` names happened; 1, something it names did (listed on
stderr); 2, bad input (a file that does not parse, no incident, a filter that is not one).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from runbook_operator.entrypoints.cli import arguments as types

OUTPUTS = ("table", "markdown", "json")


def add(sub: Any) -> None:
    from runbook_operator.gitops.whatif import KINDS

    replay = sub.add_parser(
        "replay",
        help="replay past incidents against proposed policies: what the change would have done, riskiest first",
        description="Each incident is driven through the real state machine with a simulated clock, under the "
        "baseline policies and under the proposed ones; a step that matches a recorded call takes its recorded "
        "outcome and time, an unknown one is followed both ways (or as --assume says).",
    )
    replay.add_argument(
        "--policies",
        action="append",
        required=True,
        metavar="DIR",
        help="the proposed RemediationPolicies (e.g. the pull request's checkout)",
    )
    replay.add_argument(
        "--baseline", action="append", required=True, metavar="DIR", help="the policies merged today, to compare with"
    )
    replay.add_argument(
        "--incidents",
        action="append",
        required=True,
        metavar="FILE|DIR",
        help="Incidents with their status (`kubectl get inc -A -o yaml`): files or directories",
    )
    replay.add_argument(
        "-n",
        "--namespace",
        help="only incidents of this namespace (and the default for objects that name none: default)",
    )
    replay.add_argument("--alert", action="append", metavar="NAME", help="only incidents of this alert (repeatable)")
    replay.add_argument("--since", type=types.since, metavar="DURATION", help="only incidents started within, e.g. 30d")
    replay.add_argument(
        "--assume", choices=("ok", "fail"), help="an unknown step succeeds (ok) or fails (fail); default: follow both"
    )
    replay.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    replay.add_argument(
        "--fail-on",
        type=_kinds(KINDS),
        default=(),
        metavar="KIND[,KIND...]",
        help=f"exit 1 when any of these changes happens: {', '.join(KINDS)}",
    )
    replay.set_defaults(func=run)


def _kinds(known: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        kinds = tuple(k.strip() for k in text.split(",") if k.strip())
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown)}: one of {', '.join(known)}")
        return kinds

    return parse


def run(args: argparse.Namespace) -> int:
    from runbook_operator import gitops
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.domain.model import Incident, Policy
    from runbook_operator.domain.parsing import parse_policy
    from runbook_operator.domain.status import Status, parse_timestamp
    from runbook_operator.gitops import whatif
    from runbook_operator.gitops.replay import Recording

    where = args.namespace or "default"
    try:
        found = gitops.load_resources(args.incidents)
        proposed = gitops.load_resources(args.policies)
        baseline = gitops.load_resources(args.baseline)
    except gitops.InputError as err:
        print(f"runbook-operator replay: {err}", file=sys.stderr)
        return 2
    check = default_registry().check

    def policies(resources: list[gitops.schema.Resource]) -> dict[str, list[Policy]]:
        by_namespace: dict[str, list[Policy]] = {}
        for resource in gitops.iter_kind(resources, "RemediationPolicy"):
            parsed = parse_policy(gitops.with_namespace(resource.body, where), check)
            if isinstance(parsed, Policy):
                by_namespace.setdefault(parsed.namespace, []).append(parsed)
        return by_namespace

    after, before = policies(proposed), policies(baseline)
    since = datetime.now(UTC) - timedelta(seconds=args.since) if args.since else None
    verdicts = []
    for resource in gitops.iter_kind(found, "Incident"):
        body = gitops.with_namespace(resource.body, where)
        incident, status = Incident.from_body(body), Status.from_dict(body.get("status"))
        if args.namespace and incident.namespace != args.namespace:
            continue
        if args.alert and incident.alert not in args.alert:
            continue
        if since is not None and not (status.startedAt and parse_timestamp(status.startedAt) >= since):
            continue
        recording = Recording(incident, status)
        namespace = incident.namespace
        verdicts.append(whatif.compare(recording, before.get(namespace, []), after.get(namespace, []), args.assume))
    if not verdicts:
        print("runbook-operator replay: no Incident to replay (check --incidents and the filters)", file=sys.stderr)
        return 2
    summary = whatif.Summary(tuple(verdicts))
    render = {"table": whatif.table, "markdown": whatif.markdown, "json": whatif.as_json}[args.output]
    sys.stdout.write(render(summary))
    failing = summary.failing(args.fail_on)
    if failing:
        said = ", ".join(f"{kind} ({count})" for kind, count in failing.items())
        print(f"runbook-operator replay: --fail-on: {said}", file=sys.stderr)
        return 1
    return 0
