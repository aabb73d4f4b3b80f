"""``runbook-operator``: run the operator, list actions, serve the local demo endpoint."""

from __future__ import annotations

import argparse
import logging
import sys

from runbook_operator import __version__


def _run(args: argparse.Namespace) -> int:
    import kopf

    from runbook_operator import handlers  # registers the handlers

    handlers.runtime.resolved_ttl = args.resolved_ttl
    if args.metrics_address:
        import prometheus_client

        from runbook_operator.engine.metrics import Metrics

        host, _, port = args.metrics_address.rpartition(":")
        handlers.runtime.metrics = Metrics(prometheus_client.REGISTRY)
        prometheus_client.start_http_server(int(port), host or "0.0.0.0")
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    if not args.verbose:  # one line per handled watch event or HTTP call is noise at scale
        for noisy in ("kopf.objects", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
    )
    return 0


def _actions(args: argparse.Namespace) -> int:
    from runbook_operator.actions import default_registry, reference

    registry = default_registry()
    sys.stdout.write(reference.markdown(registry) if args.markdown else reference.text(registry))
    return 0


def _demo_server(args: argparse.Namespace) -> int:
    from runbook_operator.lab.demo import serve_forever

    serve_forever(args.host, args.port, healthy=args.healthy)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runbook_operator import gitops
    from runbook_operator.actions import default_registry

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
    from runbook_operator.actions import default_registry

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


def _ttl(text: str) -> float | None:
    from runbook_operator.domain.durations import parse_duration

    if text == "never":
        return None
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)

    actions = sub.add_parser("actions", help="list the action catalog with parameters")
    actions.add_argument("--markdown", action="store_true", help="as the reference page docs/actions.md")
    actions.set_defaults(func=_actions)

    demo = sub.add_parser("demo-server", help="serve a simulated ISH Chat instance manager for the examples")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=18080)
    demo.add_argument("--healthy", action="store_true", help="start healthy (default: down, so remediation has work)")
    demo.set_defaults(func=_demo_server)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
