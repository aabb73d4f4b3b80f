"""``runbook-operator``: run the operator, list actions, check policies offline, the on-call commands."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import urllib.parse
from typing import Any

from runbook_operator import __version__


def _run(args: argparse.Namespace) -> int:
    import kopf

    from runbook_operator.actions import egress
    from runbook_operator.adapters import hostaliases
    from runbook_operator.entrypoints import handlers  # registers the handlers

    try:
        hostaliases.install(hostaliases.parse(args.host_alias or ()))
    except ValueError as err:
        print(f"runbook-operator run: {err}", file=sys.stderr)
        return 2
    egress.allow_link_local(args.allow_link_local)
    handlers.runtime.resolved_ttl = args.resolved_ttl
    if args.leader_elect:
        lease = _lease_config(args)
        if lease is None:
            return 2
        handlers.runtime.lease = lease
    if args.intake_address:
        settings = _intake_settings(args)
        if settings is None:
            return 2
        handlers.runtime.intake = settings
    handlers.runtime.archive_dsn = os.environ.get(args.archive_dsn_env) or None
    if args.liveness:
        probe = urllib.parse.urlsplit(args.liveness)
        if probe.scheme != "http" or not probe.port:
            print(
                f"runbook-operator run: --liveness: an http://HOST:PORT/PATH URL, got {args.liveness!r}",
                file=sys.stderr,
            )
            return 2
        handlers.runtime.liveness = (probe.hostname or "0.0.0.0", probe.port, probe.path or "/healthz")
    if args.metrics_address:
        import prometheus_client

        from runbook_operator.adapters import metrics

        host, _, port = args.metrics_address.rpartition(":")
        handlers.runtime.metrics = metrics.Metrics(prometheus_client.REGISTRY)
        metrics.serve(host.strip("[]") or "0.0.0.0", int(port), prometheus_client.REGISTRY)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    quiet_loggers(args.verbose)
    _raise_open_files_limit()
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=None,  # served by handlers.startup through a gate (adapters.gate.serve_health)
    )
    return 0


def _lease_config(args: argparse.Namespace) -> Any:
    """The Lease to elect a leader on, or None after saying on stderr what is wrong."""
    from runbook_operator.adapters.lease import LeaseConfig, default_identity

    namespace = args.leader_elect_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace:
        print("runbook-operator run: --leader-elect needs --leader-elect-namespace or $POD_NAMESPACE", file=sys.stderr)
        return None
    try:
        return LeaseConfig(
            namespace=namespace,
            identity=default_identity(),
            name=args.leader_elect_id,
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        )
    except ValueError as err:
        print(f"runbook-operator run: {err}", file=sys.stderr)
        return None


def quiet_loggers(verbose: bool) -> None:
    """Kopf's per-event lines only with --verbose; the HTTP clients' request lines never:
    they carry each request's URL, and a webhook URL read from a Secret is a credential."""
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    for client in ("httpx", "httpcore"):
        logging.getLogger(client).setLevel(logging.WARNING)


def _raise_open_files_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, for the whole process: a container's 1,024 is
    soon spent by connections (the intake's, the API server's); the intake keeps a quarter at most."""
    from runbook_operator.adapters import gate

    before, now = gate.raise_open_files_limit()
    if now != before:
        logging.getLogger(__name__).info("open files limit raised from %d to %d", before, now)


def _intake_settings(args: argparse.Namespace) -> Any:
    """The intake's settings, or None after saying on stderr why it cannot start."""
    from runbook_operator.adapters import intake
    from runbook_operator.domain.alerts import Options

    def fail(message: str) -> None:
        print(f"runbook-operator run: {message}", file=sys.stderr)

    try:
        host, port = intake.parse_address(args.intake_address)
        token = intake.load_token(args.intake_token_file)
    except (OSError, ValueError) as err:
        fail(f"--intake-address/--intake-token-file: {err}")
        return None
    if token is None and not args.intake_insecure:
        fail(
            f"the Alertmanager intake needs a bearer token: --intake-token-file FILE or ${intake.TOKEN_ENV} "
            "(or --intake-insecure, for a local lab only)"
        )
        return None
    if args.intake_max_alerts < 1:
        fail(f"--intake-max-alerts: must be at least 1, got {args.intake_max_alerts}")
        return None
    if args.intake_max_connections < 1:
        fail(f"--intake-max-connections: must be at least 1, got {args.intake_max_connections}")
        return None
    for flag, value in (("header", args.intake_header_timeout), ("body", args.intake_body_timeout)):
        if value <= 0:
            fail(f"--intake-{flag}-timeout: must be more than 0")
            return None
    opted_in = frozenset(ns for value in args.intake_namespaces or () for ns in value.split(",") if ns)
    watched = frozenset(args.namespace) if args.namespace else None
    options = Options(args.intake_namespace, opted_in, watched, args.intake_max_alerts)
    return intake.Settings(
        host, port, token, options, args.intake_max_bytes,
        header_timeout=args.intake_header_timeout, body_timeout=args.intake_body_timeout,
        max_connections=args.intake_max_connections,
    )  # fmt: skip


def _actions(args: argparse.Namespace) -> int:
    from runbook_operator.actions import reference
    from runbook_operator.actions.catalog import default_registry

    registry = default_registry()
    sys.stdout.write(reference.markdown(registry) if args.markdown else reference.text(registry))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runbook_operator import gitops
    from runbook_operator.actions.catalog import default_registry

    try:
        crds = gitops.load_crds(Path(args.crds) if args.crds else None)
    except gitops.InputError as err:
        print(f"runbook-operator validate: {err}", file=sys.stderr)
        return 2
    report = gitops.validate(args.paths, crds, default_registry().check)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return report.exit_code


def _plan(args: argparse.Namespace) -> int:
    from runbook_operator import gitops
    from runbook_operator.actions.catalog import default_registry

    try:
        incidents = list(gitops.iter_kind(gitops.load_resources([args.incident]), "Incident"))
        policies = list(gitops.iter_kind(gitops.load_resources(args.policies), "RemediationPolicy"))
    except gitops.InputError as err:
        print(f"runbook-operator plan: {err}", file=sys.stderr)
        return 2
    if not incidents:
        print(f"runbook-operator plan: {args.incident}: no Incident found", file=sys.stderr)
        return 2
    check = default_registry().check
    bodies = [gitops.with_namespace(p.body, args.namespace) for p in policies]
    ok = True
    for i, incident in enumerate(incidents):
        lines, matched = gitops.plan(gitops.with_namespace(incident.body, args.namespace), bodies, check)
        print(("\n" if i else "") + "\n".join(lines))
        ok = ok and matched
    return 0 if ok else 1


def _report(args: argparse.Namespace) -> int:
    from runbook_operator.domain import report

    if args.name is None and args.filename is None:
        print(f"{args.prog} report: give an incident NAME or -f FILE", file=sys.stderr)
        return 2
    try:
        if args.filename is not None:
            pairs = _report_from_file(args.filename, args.name)
        else:
            pairs = [_report_from_cluster(args)]
    except LookupError as err:
        print(f"{args.prog} report: {err}", file=sys.stderr)
        return 1
    text = "\n---\n\n".join(report.render(body, events) for body, events in pairs)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _client(args: argparse.Namespace) -> Any:
    """A client as the caller (kubeconfig, context, impersonation) and the namespace to act in."""
    from runbook_operator.adapters import kube

    return kube.api_client(kube.Connection(args.namespace, args.kubeconfig, args.context, args.as_user, args.as_group))


def _report_from_cluster(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Incident and its Events, read with the current kubeconfig (or in-cluster config)."""
    from runbook_operator.adapters.kube import Incidents, Refused

    try:
        incidents = Incidents(*_client(args))
        return incidents.get(args.name), incidents.events(args.name)
    except Refused as err:
        raise LookupError(str(err)) from None


def _oncall(args: argparse.Namespace) -> int:
    """approve, ack, resolve: as the authenticated caller; a refusal is one line on stderr, exit 1."""
    from runbook_operator.adapters.kube import Incidents, Refused, whoami
    from runbook_operator.entrypoints import oncall

    try:
        client, namespace = _client(args)
        incidents = Incidents(client, namespace)
        if args.command == "approve":
            confirm = None if args.yes else oncall.ask
            oncall.approve(incidents, whoami(client), args.name, args.step, confirm)
        elif args.command == "ack":
            oncall.acknowledge(incidents, whoami(client), args.name)
        else:
            oncall.resolve(incidents, args.name)
    except Refused as err:
        print(f"{args.prog} {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


def _report_from_file(path: str, name: str | None) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Incidents (and any Events about them) from YAML or JSON: one object, several, or a List.
    Read as validate and plan read files: the one loader, with its limits (gitops.loader)."""
    from runbook_operator.gitops.loader import InputError, load_documents, load_stream

    try:
        docs = [d for d in (load_stream() if path == "-" else load_documents(path)) if isinstance(d, dict)]
    except InputError as err:
        raise LookupError(str(err)) from None
    listed = [d.get("items") if str(d.get("kind")).endswith("List") else [d] for d in docs]
    objects = [item for items in listed if isinstance(items, list) for item in items if isinstance(item, dict)]
    incidents = [o for o in objects if o.get("kind") == "Incident"]

    def field(obj: dict[str, Any], key: str) -> dict[str, Any]:
        value = obj.get(key)
        return value if isinstance(value, dict) else {}

    if name is not None:
        incidents = [o for o in incidents if field(o, "metadata").get("name") == name]
    if not incidents:
        raise LookupError(f"{path}: no Incident" + (f" named {name}" if name else "") + " found")

    def about(incident: dict[str, Any], event: dict[str, Any]) -> bool:
        involved, meta = field(event, "involvedObject"), field(incident, "metadata")
        return involved.get("kind") == "Incident" and involved.get("name") == meta.get("name")

    events = [o for o in objects if o.get("kind") == "Event"]
    return [(i, [e for e in events if about(i, e)]) for i in incidents]


def _duration(text: str) -> float:
    from runbook_operator.domain.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _ttl(text: str) -> float | None:
    return None if text == "never" else _duration(text)


def _since(text: str) -> float:
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


def _stats(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runbook-operator", description="The ISH Chat incident runbook as a Kubernetes operator."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig (or in-cluster config)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    run.add_argument("--peering", metavar="NAME", help="use Kopf peering NAME instead of standalone mode")
    run.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument(
        "--resolved-ttl",
        type=_ttl,
        default=_ttl("24h"),
        metavar="DURATION",
        help="delete resolved incidents this long after they resolved, e.g. 24h (default), or 'never'",
    )
    run.add_argument(
        "--metrics-address",
        default="127.0.0.1:8081",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default 127.0.0.1:8081; '' turns it off)",
    )
    run.add_argument(
        "--log-format",
        choices=("full", "plain", "json"),
        default="full",
        help="json: one object a line, step outcomes with incident, policy, step, action and duration as keys",
    )
    run.add_argument(
        "--archive-dsn-env",
        default="RUNBOOK_ARCHIVE_DSN",
        metavar="VAR",
        help="archive finished incidents to the PostgreSQL DSN in env var VAR (default RUNBOOK_ARCHIVE_DSN; "
        "unset: no archive). In Kubernetes, fill it from a Secret (valueFrom.secretKeyRef)",
    )
    run.add_argument(
        "--intake-address",
        default="",
        metavar="HOST:PORT",
        help="serve the Alertmanager webhook intake on http://HOST:PORT/api/v1/alerts/alertmanager "
        "(default '': off; ':PORT' means 127.0.0.1)",
    )
    run.add_argument(
        "--intake-token-file",
        metavar="FILE",
        help="the bearer token the intake requires (else env RUNBOOK_INTAKE_TOKEN); "
        "in Kubernetes, a Secret mounted as a file",
    )
    run.add_argument(
        "--intake-insecure", action="store_true", help="let the intake run without a token (local labs only)"
    )
    run.add_argument(
        "--intake-namespace",
        default="default",
        metavar="NS",
        help="where Incidents go when the alert has no `namespace` label, or names one that has not opted in "
        "or that the operator does not watch (default: default)",
    )
    run.add_argument(
        "--intake-namespaces",
        action="append",
        metavar="NS[,NS...]",
        help="namespaces that take their alerts' Incidents without the Namespace label "
        "remediation.ishchat.io/intake=enabled (repeatable)",
    )
    run.add_argument(
        "--intake-max-bytes", type=int, default=1024 * 1024, metavar="N", help="largest webhook body (default 1 MiB)"
    )
    run.add_argument(
        "--intake-max-alerts",
        type=int,
        default=1000,
        metavar="N",
        help="most alerts in one webhook request; a larger one is refused whole with 413 (default 1000)",
    )
    run.add_argument(
        "--intake-header-timeout",
        type=_duration,
        default=_duration("10s"),
        metavar="DURATION",
        help="close an intake connection whose request line and headers have not arrived within this "
        "(from connecting, or from the previous answer); default 10s",
    )
    run.add_argument(
        "--intake-body-timeout",
        type=_duration,
        default=_duration("30s"),
        metavar="DURATION",
        help="answer 408 and close when a webhook body has not arrived within this (default 30s)",
    )
    run.add_argument(
        "--intake-max-connections",
        type=int,
        default=256,
        metavar="N",
        help="intake connections open at once; the next is answered 503 and closed at once (default 256, "
        "never more than a quarter of the process's open-files limit)",
    )
    run.add_argument(
        "--host-alias",
        action="append",
        metavar="NAME=IP",
        help="connect to IP whenever an action names host NAME (repeatable), as a pod's hostAliases; "
        "the local lab uses it to answer the pack's in-cluster hosts on loopback",
    )
    run.add_argument(
        "--allow-link-local",
        action="store_true",
        help="let http.* and notify.* connect to link-local and cloud metadata addresses (169.254.0.0/16, "
        "fe80::/10, fd00:ec2::254), refused by default: from the operator's pod they answer with cloud credentials",
    )
    election = run.add_argument_group(
        "leader election", "with several replicas, only the holder of a coordination.k8s.io Lease drives Incidents"
    )
    election.add_argument(
        "--leader-elect",
        action="store_true",
        help="drive Incidents only while holding the Lease; standbys keep their watches warm and take over "
        "when it lapses, or at once when the leader stops gracefully (the Deployment sets it)",
    )
    election.add_argument(
        "--leader-elect-namespace", metavar="NS", help="the Lease's namespace (default: $POD_NAMESPACE)"
    )
    election.add_argument("--leader-elect-id", default="runbook-operator", metavar="NAME", help="the Lease's name")
    for flag, default, what in (
        ("lease-duration", "15s", "how long standbys wait after the last renewal they saw before taking the Lease"),
        ("renew-deadline", "10s", "the leader stops driving when it could not renew for this long"),
        ("retry-period", "2s", "how often the leader renews and the standbys try to acquire"),
    ):
        election.add_argument(
            f"--leader-elect-{flag}", type=_duration, default=_duration(default), metavar="DURATION",
            help=f"{what} (default {default}, as client-go)",
        )  # fmt: skip
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)

    stats = sub.add_parser("stats", help="per-alert incident counts, MTTA and MTTR from the incident archive")
    stats.add_argument("--since", type=_since, default=_since("7d"), metavar="DURATION", help="e.g. 7d (default), 12h")
    stats.add_argument(
        "--dsn-env", default="RUNBOOK_ARCHIVE_DSN", metavar="VAR", help="env var with the archive's PostgreSQL DSN"
    )
    stats.set_defaults(func=_stats)

    actions = sub.add_parser("actions", help="list the action catalog with parameters")
    actions.add_argument("--markdown", action="store_true", help="as the reference page docs/actions.md")
    actions.set_defaults(func=_actions)

    validate = sub.add_parser(
        "validate", help="check RemediationPolicy and Incident files offline (CRD schema and policy rules)"
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories (searched recursively)")
    validate.add_argument(
        "--crds", metavar="DIR", help="directory of the CRDs (default: $RUNBOOK_OPERATOR_CRDS, else the repo's crds/)"
    )
    validate.set_defaults(func=_validate)

    plan = sub.add_parser("plan", help="show offline which policy an incident would get and the steps it would run")
    plan.add_argument("incident", metavar="INCIDENT.yaml", help="a file with one or more Incidents")
    plan.add_argument(
        "--policies", action="append", required=True, metavar="DIR", help="RemediationPolicy files or directories"
    )
    plan.add_argument(
        "-n", "--namespace", default="default", help="namespace for objects that name none (default: default)"
    )
    plan.set_defaults(func=_plan)
    _add_oncall_commands(sub)
    parser.set_defaults(prog="runbook-operator")
    return parser


def _add_oncall_commands(sub: Any) -> None:
    """The commands people run against the cluster as themselves (also the kubectl plugin's)."""
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("-n", "--namespace", help="the incident's namespace (default: the kubeconfig context's)")
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    cluster.add_argument("--context", help="kubeconfig context (default: the current one)")
    cluster.add_argument("--as", dest="as_user", metavar="USER", help="impersonate USER, as kubectl --as")
    cluster.add_argument(
        "--as-group", dest="as_group", metavar="GROUP", help="impersonate GROUP, as kubectl --as-group"
    )

    approve = sub.add_parser(
        "approve",
        parents=[cluster],
        help="approve the step an incident waits for, as yourself (shows the action and parameters, then asks)",
    )
    approve.add_argument("name", metavar="INCIDENT")
    approve.add_argument("step", metavar="STEP", help="the step waiting in AwaitingApproval")
    approve.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    approve.set_defaults(func=_oncall)
    ack = sub.add_parser("ack", parents=[cluster], help="acknowledge an incident as yourself (spec.acknowledgedBy)")
    ack.add_argument("name", metavar="INCIDENT")
    ack.set_defaults(func=_oncall)
    resolve = sub.add_parser("resolve", parents=[cluster], help="mark an incident over (spec.resolved: true)")
    resolve.add_argument("name", metavar="INCIDENT")
    resolve.set_defaults(func=_oncall)

    report = sub.add_parser("report", parents=[cluster], help="render a post-incident report (Markdown) of an Incident")
    report.add_argument("name", nargs="?", metavar="NAME", help="the Incident to read from the cluster")
    report.add_argument(
        "-f",
        "--filename",
        metavar="FILE",
        help="render offline from YAML or JSON (kubectl get inc NAME -o yaml); - is stdin",
    )
    report.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    report.set_defaults(func=_report)


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
