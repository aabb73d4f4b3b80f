"""``runbook-operator replay``: what a policy change would have done to incidents that happened.

Exit codes: 0, nothing ``--fail-on`` names happened; 1, something it names did (listed on
stderr); 2, bad input (a file that does not parse, no incident, a filter that is not one).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from runbook_operator.entrypoints.cli import arguments as types

if TYPE_CHECKING:
    from runbook_operator.domain.budgets import Budget
    from runbook_operator.domain.matching import Candidate
    from runbook_operator.domain.model import Policy
    from runbook_operator.gitops.replay import Assume, Recording
    from runbook_operator.gitops.whatif import Verdict

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
        "--policies", action="append", required=True, metavar="DIR",
        help="the proposed RemediationPolicies (e.g. the pull request's checkout); RemediationBudgets in them "
        "say which remediation steps would have waited Throttled (change kind `throttled`)",
    )  # fmt: skip
    replay.add_argument(
        "--default-budget", metavar="NAMESPACE/NAME",
        help="which RemediationBudget of --policies is the operator-wide default (as `run --default-budget`)",
    )  # fmt: skip
    replay.add_argument(
        "--baseline", action="append", metavar="DIR",
        help="the policies merged today (default with --archive: the version that drove each incident)",
    )  # fmt: skip
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--incidents", action="append", metavar="FILE|DIR",
        help="Incidents with their status (`kubectl get inc -A -o yaml`): files or directories",
    )  # fmt: skip
    source.add_argument("--archive", action="store_true", help="the incident archive (PostgreSQL; DSN from --dsn-env)")
    source.add_argument(
        "--from-cluster", action="store_true",
        help="the Incidents in the cluster, as the caller (kubeconfig; -n NS, else all namespaces)",
    )  # fmt: skip
    replay.add_argument("--kubeconfig", help="with --from-cluster: kubeconfig file (default: $KUBECONFIG)")
    replay.add_argument("--context", help="with --from-cluster: kubeconfig context (default: the current one)")
    replay.add_argument(
        "--dsn-env", default="RUNBOOK_ARCHIVE_DSN", metavar="VAR", help="env var with the archive's PostgreSQL DSN"
    )
    replay.add_argument(
        "-n", "--namespace", help="only incidents of this namespace (and the default for objects that name none)"
    )
    replay.add_argument("--alert", action="append", metavar="NAME", help="only incidents of this alert (repeatable)")
    replay.add_argument(
        "--name", action="append", metavar="INCIDENT", help="only the Incident of this name (repeatable; with -n)"
    )
    replay.add_argument("--since", type=types.since, metavar="DURATION", help="only incidents started within, e.g. 30d")
    replay.add_argument(
        "--assume", choices=("ok", "fail"), help="an unknown step succeeds (ok) or fails (fail); default: follow both"
    )
    replay.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    replay.add_argument(
        "-j", "--jobs", type=_positive, default=len(os.sched_getaffinity(0)), metavar="N",
        help="processes to replay on (default: the CPUs this process may use)",
    )  # fmt: skip
    replay.add_argument(
        "--fail-on", type=_kinds(KINDS), default=(), metavar="KIND[,KIND...]",
        help=f"exit 1 when any of these changes happens: {', '.join(KINDS)}",
    )  # fmt: skip
    replay.set_defaults(func=run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _kinds(known: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        kinds = tuple(k.strip() for k in text.split(",") if k.strip())
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown)}: one of {', '.join(known)}")
        return kinds

    return parse


def run(args: argparse.Namespace) -> int:
    with paused_gc():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from runbook_operator import gitops
    from runbook_operator.gitops import whatif

    def fail(message: str) -> int:
        print(f"runbook-operator replay: {message}", file=sys.stderr)
        return 2

    if not args.archive and not args.baseline:
        return fail("--baseline DIR is needed with --incidents and --from-cluster (only the archive keeps the "
                    "policy version that drove each incident)")  # fmt: skip
    try:
        resources = gitops.load_resources(args.policies)
        proposed = _policies(resources, args.namespace)
        budgets, defaults = _budgets(resources, args.namespace, args.default_budget)
        baseline = _policies(gitops.load_resources(args.baseline), args.namespace) if args.baseline else None
        if args.archive:
            found, not_replayable = _from_archive(args)
        elif args.from_cluster:
            found, not_replayable = _from_cluster(args), 0
        else:
            found, not_replayable = _from_files(args), 0
    except gitops.InputError as err:
        return fail(str(err))
    except (LookupError, ValueError) as err:
        return fail(str(err))
    work = []
    for body, recorded in found:
        namespace = body["metadata"]["namespace"]
        work.append(
            (body, baseline.get(namespace, ()) if baseline is not None else recorded, proposed.get(namespace, ()))
        )
    budgeted = bool(budgets or defaults)
    try:
        reviewed = review(work, args.assume, args.jobs, every_path=args.output == "json", budgeted=budgeted)
    except Unreplayable as err:
        return fail(str(err))
    verdicts = [verdict for verdict, _ in reviewed]
    if budgeted:  # the incidents together, in the order they happened, against the budgets
        held = whatif.throttled(verdicts, budgets, defaults, proposed)
        reviewed = [(v, whatif.rethrottled(text, v) if text and v is not old else text)
                    for v, old, (_, text) in zip(held, verdicts, reviewed, strict=True)]  # fmt: skip
        verdicts = held
    if not verdicts:
        older = f"; {not_replayable} archived before the archive kept what a replay needs" if not_replayable else ""
        return fail(f"no Incident to replay (check the source and the filters){older}")
    summary = whatif.Summary(tuple(verdicts), not_replayable)
    if args.output == "json":
        sys.stdout.write(whatif.as_json(summary, [text for _, text in reviewed]))
    else:
        sys.stdout.write({"table": whatif.table, "markdown": whatif.markdown}[args.output](summary))
    failing = summary.failing(args.fail_on)
    if failing:
        said = ", ".join(f"{kind} ({count})" for kind, count in failing.items())
        print(f"runbook-operator replay: --fail-on: {said}", file=sys.stderr)
        return 1
    return 0


Found = list[tuple[Mapping[str, Any], list["Policy"]]]  # an Incident's body (with status), the policy that drove it
Work = tuple[Mapping[str, Any], Sequence["Candidate"], Sequence["Candidate"]]  # an Incident, its baseline, the proposal
PARALLEL_FROM = 500  # incidents; fewer are replayed in this process (starting workers costs more)
_WORK: Sequence[Work] = ()  # what forked workers read (inherited, not pickled)


Reviewed = tuple["Verdict", str]  # the verdict; with every path, its paths only as its JSON (``whatif.encoded``)


def review(
    work: Sequence[Work], assume: Assume | None, jobs: int, every_path: bool = True, budgeted: bool = False
) -> list[Reviewed]:
    """``whatif.compare`` for every incident (its status parsed here), on ``jobs`` processes when
    there are many. Workers are forked: they inherit the input and send back only the verdicts;
    with ``every_path`` (JSON), each verdict's paths encoded (sent back as one string, not as
    objects to unpickle, and encoded on every CPU)."""
    global _WORK
    if jobs <= 1 or len(work) < PARALLEL_FROM:
        return [_compare(item, assume, every_path, budgeted) for item in work]
    size = -(-len(work) // (jobs * 4))  # four chunks per worker: a slow chunk does not hold the rest
    chunks = [(start, min(start + size, len(work)), assume, every_path, budgeted)
              for start in range(0, len(work), size)]  # fmt: skip
    _WORK = work
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            return [verdict for part in pool.map(_compare_chunk, chunks) for verdict in part]
    finally:
        _WORK = ()


class Unreplayable(Exception):
    """An Incident whose recorded spec or status the replay cannot read (exit 2, naming it)."""


def _compare(item: Work, assume: Assume | None, every_path: bool, budgeted: bool = False) -> Reviewed:
    from runbook_operator.gitops import whatif

    body, baseline, proposed = item
    try:
        verdict = whatif.compare(_recording(body), baseline, proposed, assume, every_path, budgeted)
        if not every_path:
            return verdict, ""
        return replace(verdict, before=(), after=()), whatif.encoded(verdict)
    except Exception as err:  # one incident's data, whatever is wrong with it: named, not a traceback
        meta = body.get("metadata") or {}
        raise Unreplayable(f"cannot replay Incident {meta.get('namespace')}/{meta.get('name')}: "
                           f"{type(err).__name__}: {err}") from None  # fmt: skip


def _compare_chunk(chunk: tuple[int, int, Assume | None, bool, bool]) -> list[Reviewed]:
    start, stop, assume, every_path, budgeted = chunk
    return [_compare(item, assume, every_path, budgeted) for item in _WORK[start:stop]]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off, for a command that ends soon: a replay allocates a few
    hundred short-lived objects per step and makes no cycles, and the collector, walking every
    object the input holds each time it ran, took a third of the time (and three quarters of
    unpickling the workers' verdicts)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _budgets(resources: Sequence[Any], namespace: str | None, default: str | None) -> tuple[list[Budget], list[Budget]]:
    """The RemediationBudgets among the files: each namespace's, and the one --default-budget names;
    ValueError for an invalid one, or a default not among them."""
    from runbook_operator import gitops
    from runbook_operator.domain.budgets import InvalidBudget, parse_budget

    found = []
    for resource in gitops.iter_kind(resources, "RemediationBudget"):
        budget = parse_budget(gitops.with_namespace(resource.body, namespace or "default"))
        if isinstance(budget, InvalidBudget):
            raise ValueError(f"{resource.file}: budget {budget.namespace}/{budget.name}: {budget.error}")
        found.append(budget)
    if default is None:
        return found, []
    chosen = [b for b in found if b.key == default]
    if not chosen:
        raise ValueError(f"--default-budget {default}: no such RemediationBudget in --policies")
    return [b for b in found if b.key != default], chosen


def _policies(resources: Sequence[Any], namespace: str | None) -> dict[str, Sequence[Candidate]]:
    from runbook_operator import gitops
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.domain.matching import PolicySet
    from runbook_operator.domain.model import Policy
    from runbook_operator.domain.parsing import parse_policy

    check = default_registry().check
    by_namespace: dict[str, list[Policy]] = {}
    for resource in gitops.iter_kind(resources, "RemediationPolicy"):
        parsed = parse_policy(gitops.with_namespace(resource.body, namespace or "default"), check)
        if isinstance(parsed, Policy):
            by_namespace.setdefault(parsed.namespace, []).append(parsed)
    return {name: PolicySet(group) for name, group in by_namespace.items()}  # indexed: selected from many times


def _recording(body: Mapping[str, Any]) -> Recording:
    from runbook_operator.domain.model import Incident
    from runbook_operator.gitops.replay import Recording

    return Recording(Incident.from_body(body), body.get("status"))  # the status is parsed if it is replayed


def _from_files(args: argparse.Namespace) -> Found:
    from runbook_operator import gitops

    bodies = [r.body for r in gitops.iter_kind(gitops.load_resources(args.incidents), "Incident")]
    return _filtered(args, bodies)


def _from_cluster(args: argparse.Namespace) -> Found:
    from runbook_operator.adapters import kube

    try:
        client, namespace = kube.api_client(kube.Connection(args.namespace, args.kubeconfig, args.context))
        bodies = kube.Incidents(client, namespace).every(all_namespaces=not args.namespace)
    except kube.Refused as err:
        raise LookupError(str(err)) from None
    return _filtered(args, bodies)


def _filtered(args: argparse.Namespace, bodies: Sequence[Mapping[str, Any]]) -> Found:
    from runbook_operator import gitops
    from runbook_operator.domain.model import Incident

    since = datetime.now(UTC) - timedelta(seconds=args.since) if args.since else None
    found: Found = []
    for body in bodies:
        body = gitops.with_namespace(body, args.namespace or "default")
        incident, started = Incident.from_body(body), (body.get("status") or {}).get("startedAt")
        if args.namespace and incident.namespace != args.namespace:
            continue
        if args.alert and incident.alert not in args.alert:
            continue
        if args.name and incident.name not in args.name:
            continue
        if since is not None and not (isinstance(started, str) and _at_or_after(started, since)):
            continue
        found.append((body, []))
    return found


def _at_or_after(text: str, since: datetime) -> bool:
    from runbook_operator.domain.status import parse_timestamp

    try:
        return parse_timestamp(text) >= since
    except ValueError:  # not a timestamp the operator wrote: not known to be within --since
        return False


def _from_archive(args: argparse.Namespace) -> tuple[Found, int]:
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.adapters.archive import Archive, ArchivedIncident
    from runbook_operator.domain.model import Policy
    from runbook_operator.domain.parsing import parse_policy

    async def read(archive: Archive) -> tuple[list[ArchivedIncident], int]:
        since = timedelta(seconds=args.since) if args.since else None
        return await archive.replayable(since, args.alert or (), args.namespace, args.name or ())

    try:
        rows, not_replayable = types.on_archive(args.dsn_env, read)
    except types.CommandError as err:
        raise LookupError(err.message) from None
    check = default_registry().check
    found: Found = []
    for row in rows:
        recorded: list[Policy] = []
        if row.policy_row is not None:
            p = row.policy_row
            body = {"metadata": {"name": p.name, "namespace": p.namespace, "generation": p.generation}, "spec": p.spec}
            parsed = parse_policy(body, check)
            recorded = [parsed] if isinstance(parsed, Policy) else []
        found.append((row.body(), recorded))
    return found, not_replayable
