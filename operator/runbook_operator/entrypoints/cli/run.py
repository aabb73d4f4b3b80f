"""``runbook-operator run``: the operator itself, under Kopf, with the flags that set it up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.parse
from typing import Any

from runbook_operator.entrypoints.cli import arguments as types


def add(sub: Any) -> None:
    command = sub.add_parser("run", help="run the operator against the current kubeconfig (or in-cluster config)")
    scope = command.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    command.add_argument("--peering", metavar="NAME", help="use Kopf peering NAME instead of standalone mode")
    command.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    command.add_argument(
        "--resolved-ttl",
        type=types.ttl,
        default=types.ttl("24h"),
        metavar="DURATION",
        help="delete resolved incidents this long after they resolved, e.g. 24h (default), or 'never'",
    )
    command.add_argument(
        "--metrics-address",
        default="127.0.0.1:8081",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default 127.0.0.1:8081; '' turns it off)",
    )
    command.add_argument(
        "--log-format",
        choices=("full", "plain", "json"),
        default="full",
        help="json: one object a line, step outcomes with incident, policy, step, action and duration as keys",
    )
    command.add_argument(
        "--archive-dsn-env",
        default="RUNBOOK_ARCHIVE_DSN",
        metavar="VAR",
        help="archive finished incidents to the PostgreSQL DSN in env var VAR (default RUNBOOK_ARCHIVE_DSN; "
        "unset: no archive). In Kubernetes, fill it from a Secret (valueFrom.secretKeyRef)",
    )
    command.add_argument(
        "--intake-address",
        default="",
        metavar="HOST:PORT",
        help="serve the Alertmanager webhook intake on http://HOST:PORT/api/v1/alerts/alertmanager "
        "(default '': off; ':PORT' means 127.0.0.1)",
    )
    command.add_argument(
        "--intake-token-file",
        metavar="FILE",
        help="the bearer token the intake requires (else env RUNBOOK_INTAKE_TOKEN); "
        "in Kubernetes, a Secret mounted as a file",
    )
    command.add_argument(
        "--intake-insecure", action="store_true", help="let the intake run without a token (local labs only)"
    )
    command.add_argument(
        "--intake-namespace",
        default="default",
        metavar="NS",
        help="where Incidents go when the alert has no `namespace` label, or names one that has not opted in "
        "or that the operator does not watch (default: default)",
    )
    command.add_argument(
        "--intake-namespaces",
        action="append",
        metavar="NS[,NS...]",
        help="namespaces that take their alerts' Incidents without the Namespace label "
        "remediation.ishchat.io/intake=enabled (repeatable)",
    )
    command.add_argument(
        "--intake-max-bytes", type=int, default=1024 * 1024, metavar="N", help="largest webhook body (default 1 MiB)"
    )
    command.add_argument(
        "--intake-max-alerts",
        type=int,
        default=1000,
        metavar="N",
        help="most alerts in one webhook request; a larger one is refused whole with 413 (default 1000)",
    )
    command.add_argument(
        "--intake-header-timeout",
        type=types.duration,
        default=types.duration("10s"),
        metavar="DURATION",
        help="close an intake connection whose request line and headers have not arrived within this "
        "(from connecting, or from the previous answer); default 10s",
    )
    command.add_argument(
        "--intake-body-timeout",
        type=types.duration,
        default=types.duration("30s"),
        metavar="DURATION",
        help="answer 408 and close when a webhook body has not arrived within this (default 30s)",
    )
    command.add_argument(
        "--intake-max-connections",
        type=int,
        default=256,
        metavar="N",
        help="intake connections open at once; the next is answered 503 and closed at once (default 256, "
        "never more than a quarter of the process's open-files limit)",
    )
    command.add_argument(
        "--host-alias",
        action="append",
        metavar="NAME=IP",
        help="connect to IP whenever an action names host NAME (repeatable), as a pod's hostAliases; "
        "the local lab uses it to answer the pack's in-cluster hosts on loopback",
    )
    command.add_argument(
        "--allow-link-local",
        action="store_true",
        help="let http.* and notify.* connect to link-local and cloud metadata addresses (169.254.0.0/16, "
        "fe80::/10, fd00:ec2::254), refused by default: from the operator's pod they answer with cloud credentials",
    )
    command.add_argument(
        "--default-budget",
        metavar="NAMESPACE/NAME",
        help="the operator-wide RemediationBudget: it limits every incident whose namespace has no budget "
        "selecting it, all such namespaces together (the chart installs one; its namespace must be watched)",
    )
    election = command.add_argument_group(
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
            f"--leader-elect-{flag}", type=types.duration, default=types.duration(default), metavar="DURATION",
            help=f"{what} (default {default}, as client-go)",
        )  # fmt: skip
    command.add_argument("-v", "--verbose", action="store_true")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    lease = intake = liveness = metrics = None
    try:
        default_budget = budget_name(args.default_budget, args.namespace)
    except ValueError as err:
        print(f"runbook-operator run: --default-budget: {err}", file=sys.stderr)
        return 2
    if args.leader_elect:
        lease = lease_config(args)
        if lease is None:
            return 2
    if args.intake_address:
        intake = intake_settings(args)
        if intake is None:
            return 2
    if args.liveness:
        probe = urllib.parse.urlsplit(args.liveness)
        if probe.scheme != "http" or not probe.port:
            print(
                f"runbook-operator run: --liveness: an http://HOST:PORT/PATH URL, got {args.liveness!r}",
                file=sys.stderr,
            )
            return 2
        liveness = (probe.hostname or "0.0.0.0", probe.port, probe.path or "/healthz")
    if args.metrics_address:
        import prometheus_client

        from runbook_operator.adapters import metrics as served

        host, _, port = args.metrics_address.rpartition(":")
        metrics = served.Metrics(prometheus_client.REGISTRY)
        served.serve(host.strip("[]") or "0.0.0.0", int(port), prometheus_client.REGISTRY)
    config = handlers.Config(
        resolved_ttl=args.resolved_ttl,
        metrics=metrics,
        archive_dsn=os.environ.get(args.archive_dsn_env) or None,
        intake=intake,
        liveness=liveness,
        lease=lease,
        default_budget=default_budget,
    )
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    quiet_loggers(args.verbose)
    _raise_open_files_limit()
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=None,  # served by handlers.startup through a gate (adapters.gate.serve_health)
        memo=handlers.memo(handlers.Runtime(config)),
    )
    return 0


def budget_name(flag: str | None, watched: list[str] | None) -> tuple[str, str] | None:
    """--default-budget's (namespace, name); ValueError when it is malformed or not watched."""
    if not flag:
        return None
    namespace, _, name = flag.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"NAMESPACE/NAME, got {flag!r}")
    if watched and namespace not in watched:
        raise ValueError(f"its namespace {namespace!r} is not watched (--namespace {' '.join(watched)}); add it")
    return namespace, name


def lease_config(args: argparse.Namespace) -> Any:
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


def intake_settings(args: argparse.Namespace) -> Any:
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
