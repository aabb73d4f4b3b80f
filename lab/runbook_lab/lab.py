"""The local lab: ISH Chat, its dependencies, monitoring and the operator, on loopback.

``Lab(root, kubeconfig, kubectl).up()`` brings up, on one machine:

* PostgreSQL and Redis (real servers), Prometheus and Alertmanager (real), the simulated
  ISH Chat services and exporters (:mod:`.ishchat`), each on a loopback address of its own
  (``127.0.X.1`` … ``127.0.X.8``, the first free ``X``) and on the port the runbook uses;
* in the cluster: namespace ``ishchat`` with the workloads as Deployments and StatefulSets
  (pods run under kwok), the Secrets the pack reads, and the pack at lab speed
  (:mod:`.speed`);
* the pack's alert rules (at lab speed) in Prometheus, its Alertmanager configuration
  pointed at the operator's intake;
* the lab's kubelet: a thread that watches the workloads and, like a real kubelet would,
  brings a crashed service (or a stopped PostgreSQL/Redis) back when its pods are replaced
  by a rollout restart;
* the operator, with ``--host-alias`` for every in-cluster name the pack uses, so the pack
  runs unchanged apart from its timings.

``POST /lab/faults/NAME`` on the control address injects a fault (:data:`FAULTS`);
``POST /hooks/NAME`` receives the pack's notifications. ``down()`` stops everything by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import psycopg
import urllib3
import yaml

from runbook_lab import images, incluster, ishchat, speed
from runbook_lab import workload as workload_server
from runbook_lab.controlplane import NODE_NAME, free_port
from runbook_lab.demo import DemoService
from runbook_lab.kubelet import LogServer
from runbook_lab.node import POD_CIDR, Node, placement
from runbook_lab.services import Alertmanager, Postgres, Prometheus, Redis, Server
from runbook_operator.actions.api import CONSENT_ANNOTATION

ROOT = Path(__file__).resolve().parents[2]  # the checkout (manifests/, crds/)
PACK = ROOT / "manifests" / "runbooks" / "ish-chat"
NAMESPACE = "ishchat"
DATABASE, DB_USER = "ish_chat", "ishchat_user"
# the lab's on-call engineer: `make demo` approves as them (impersonated), their group holds the approver role
ONCALL_USER, ONCALL_GROUP = "oncall@ishchat.example", "ishchat:oncall"

# in-cluster name -> the last octet of its loopback address
HOSTS = {
    "instance-manager.ishchat.svc": 1,
    "intelligent-router.ishchat.svc": 2,
    "load-balancer.ishchat.svc": 3,
    "postgres.ishchat.svc": 4,
    "redis.ishchat.svc": 5,
    "prometheus.monitoring.svc": 6,
    "alertmanager.monitoring.svc": 7,
    "lab.ishchat.svc": 8,  # exporters, notifications, the lab's control API
    "archive.monitoring.svc": 9,  # the operator's incident archive (its own PostgreSQL: replay reads it)
}
CONTROL_PORT = 8080
# in-cluster name -> the ports its lab address serves (the first is its service's; all must be free)
PORTS = {
    **{f"{service}.ishchat.svc": (port,) for service, port in ishchat.SERVICES.items()},
    "postgres.ishchat.svc": (5432,),
    "redis.ishchat.svc": (6379,),
    "prometheus.monitoring.svc": (9090,),
    "alertmanager.monitoring.svc": (9093,),
    "lab.ishchat.svc": (CONTROL_PORT, *ishchat.EXPORTER_PORTS.values()),
    "archive.monitoring.svc": (5432,),
}
ARCHIVE_DATABASE, ARCHIVE_USER = "runbook_archive", "runbook"
ARCHIVE_SECRET = "runbook-archive"  # in the operator's namespace, for the chart's archive.dsnSecret
EXAMPLES_PORT = 18080
EXAMPLES_HOST = "demo.default.svc"  # manifests/examples/ name it; the demo endpoint listens on 127.0.0.1
# on a real node: the host's servers, reached from pods through a selector-less Service each
HOST_SERVICES = ("postgres.ishchat.svc", "redis.ishchat.svc", "prometheus.monitoring.svc",
                 "alertmanager.monitoring.svc", "lab.ishchat.svc", "archive.monitoring.svc")  # fmt: skip
WORKLOADS = {  # name -> (kind, replicas)
    "instance-manager": ("Deployment", 2),
    "intelligent-router": ("Deployment", 2),
    "load-balancer": ("Deployment", 2),
    "postgres": ("StatefulSet", 1),
    "redis": ("StatefulSet", 1),
}
FAULTS = {
    **ishchat.FAULTS,
    "postgresql-down": "PostgreSQL stops (its process is shut down)",
    "postgresql-slow-queries": "a query taking 0.6s runs in a loop",
    "redis-down": "Redis stops (its process is shut down)",
}
# the alert each fault raises (the demo and the tests wait for its Incident)
ALERTS = {
    "instance-manager-down": "InstanceManagerDown",
    "intelligent-router-down": "IntelligentRouterDown",
    "load-balancer-down": "LoadBalancerDown",
    "high-response-time": "HighResponseTime",
    "high-error-rate": "HighErrorRate",
    "high-cpu-usage": "HighCPUUsage",
    "high-memory-usage": "HighMemoryUsage",
    "disk-space-running-low": "DiskSpaceRunningLow",
    "postgresql-down": "PostgreSQLDown",
    "postgresql-slow-queries": "PostgreSQLSlowQueries",
    "redis-down": "RedisDown",
    "unexpected-cost-spike": "UnexpectedCostSpike",
}
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
ALERTMANAGER = "alertmanager.monitoring.svc"


class LabError(RuntimeError):
    pass


def pick_subnet() -> str:
    """The first ``127.0.X`` whose lab ports are all free (so two labs can run side by side)."""
    for x in range(10, 250):
        if all(_free(f"127.0.{x}.{HOSTS[name]}", port) for name, ports in PORTS.items() for port in ports):
            return f"127.0.{x}"
    raise LabError("no free 127.0.X.0/24 for the lab")


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Lab:
    def __init__(
        self,
        root: Path,
        kubeconfig: Path,
        kubectl: Path,
        factor: float = speed.FACTOR,
        quiet: bool = True,
        examples: bool = True,
        node: Node | None = None,
        helm: incluster.Helm | None = None,
    ) -> None:
        """``examples``: also serve the endpoint manifests/examples/ remediates, on 127.0.0.1:18080.

        ``node``: a real node (:mod:`.node`): the ISH Chat services run there as containers of the lab's
        image, and with ``helm`` the operator too, installed by its chart from its own image; without
        ``helm`` it runs as a host process (``make run OPERATOR=host``). Without ``node``, kwok plays
        the pods and the lab's kubelet plays their restarts.
        """
        self.root, self.kubeconfig, self.kubectl = root.resolve(), kubeconfig, kubectl
        self.factor, self.quiet, self.with_examples = factor, quiet, examples
        self.node, self.helm = node, helm
        self.service_ips: dict[str, str] = {}  # in-cluster name -> its Service's IP (real node)
        self.crashed: set[str] = set()  # ISH Chat workloads whose containers a fault broke (real node)
        self.in_cluster_intake = ""
        self.subnet = ""
        self.token = secrets.token_hex(24)
        self.db_password = secrets.token_hex(12)
        self.archive_password = secrets.token_hex(12)
        self.intake_port = self.metrics_port = 0
        self.hooks: list[tuple[str, Any]] = []
        self.sim: ishchat.IshChat | None = None
        self.postgres: Postgres | None = None
        self.redis: Redis | None = None
        self.archive: Postgres | None = None
        self.prometheus: Prometheus | None = None
        self.alertmanager: Alertmanager | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.examples: DemoService | None = None
        self.log_server: LogServer | None = None
        self._control: Any = None
        self._kubelet: threading.Thread | None = None
        self._stopping = threading.Event()
        self._slow: threading.Thread | None = None
        self._slow_stop = threading.Event()

    # -- addresses -----------------------------------------------------------------------------

    def ip(self, host: str) -> str:
        return f"{self.subnet}.{HOSTS[host]}"

    def address(self, host: str) -> tuple[str, int]:
        """(IP, port) of the lab's stand-in for an in-cluster service."""
        return self.ip(host), PORTS[host][0]

    @property
    def control_url(self) -> str:
        return f"http://{self.ip('lab.ishchat.svc')}:{CONTROL_PORT}"

    @property
    def intake_url(self) -> str:
        return self.in_cluster_intake or f"http://127.0.0.1:{self.intake_port}/api/v1/alerts/alertmanager"

    @property
    def real(self) -> bool:
        return self.node is not None

    def host_aliases(self) -> list[str]:
        """For an operator on the host: the ISH Chat Services' IPs on a real node, else the lab's stand-ins."""
        aliases = [f"{name}={self.service_ips.get(name) or self.ip(name)}" for name in HOSTS]
        return [*aliases, f"{EXAMPLES_HOST}=127.0.0.1"]

    # -- lifecycle -----------------------------------------------------------------------------

    def up(self, operator_output: Path | None = None) -> Lab:
        """Start everything; on any failure stop what started and raise."""
        try:
            self._up(operator_output)
        except BaseException:
            self.down()
            raise
        return self

    def _up(self, operator_output: Path | None) -> None:
        other = running_lab(self.root)
        if other is not None:
            raise LabError(f"a lab already runs from {self.root} (pid {other['pid']}); stop it first")
        shutil.rmtree(self.root, ignore_errors=True)  # every lab starts from empty data
        self.root.mkdir(parents=True)
        self.subnet = pick_subnet()
        self._say(f"lab addresses {self.subnet}.1-{max(HOSTS.values())}")
        clients = (POD_CIDR,) if self.real else ()
        self.postgres = Postgres(self.root / "postgres", *self.address("postgres.ishchat.svc"), clients=clients)
        self.postgres.init(DATABASE, DB_USER, self.db_password)
        self._seed_database()
        self.redis = Redis(self.root / "redis", *self.address("redis.ishchat.svc"))
        self.redis.start()
        self.archive = Postgres(self.root / "archive", *self.address("archive.monitoring.svc"), clients=clients)
        self.archive.init(ARCHIVE_DATABASE, ARCHIVE_USER, self.archive_password)
        (self.root / "archive-dsn").write_text(self.archive_dsn())
        (self.root / "archive-dsn").chmod(0o600)
        self._say("PostgreSQL, Redis and the incident archive up")
        probes = {"postgres": self._postgres_metrics, "redis": self._redis_metrics}
        self.sim = ishchat.IshChat(
            {name: self.ip(f"{name}.ishchat.svc") for name in ishchat.SERVICES},
            self.ip("lab.ishchat.svc"),
            probes,
            serve_services=not self.real,  # on a real node each service is a container that asks the world
        ).start()
        self._control = _serve_control(self)
        self.intake_port, self.metrics_port = free_port(), free_port()
        token_file = self.root / "intake-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        if not self.real:
            self._start_monitoring(token_file)
            self._say("simulated ISH Chat, Prometheus and Alertmanager up")
        applied = self._apply_cluster()
        self._say(f"namespace {NAMESPACE}: workloads, secrets and the {applied} policies applied")
        if self.real:
            self._start_monitoring(token_file)
            self._say("Prometheus (scraping the ISH Chat Services) and Alertmanager up")
        pki = self.kubeconfig.parent / "pki"  # a ControlPlane's; the API server does not verify kubelets here
        if (pki / "apiserver.crt").exists():
            self.log_server = LogServer(pki / "apiserver.crt", pki / "apiserver.key", self._pod_logs).start()
        self._kubelet = threading.Thread(target=self._kubelet_loop, name="lab-kubelet", daemon=True)
        self._kubelet.start()
        if self.with_examples and _free("127.0.0.1", EXAMPLES_PORT):
            self.examples = DemoService("127.0.0.1", EXAMPLES_PORT).start()
        if not (self.real and self.helm is not None):
            self._start_operator(token_file, operator_output)
        self._write_state()

    def down(self) -> None:
        self._stopping.set()
        self._slow_stop.set()
        if self.in_cluster_intake and self.helm is not None:
            incluster.uninstall(self.helm)  # its pods would otherwise keep acting on a lab that is gone
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(5)
        for server in (self.alertmanager, self.prometheus, self.redis, self.postgres, self.archive):
            if server is not None:
                server.stop()
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
        if self.sim is not None:
            self.sim.stop()
        if self.examples is not None:
            self.examples.stop()
        if self.log_server is not None:
            self.log_server.stop()
        if self._kubelet is not None:
            self._kubelet.join(5)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "lab.json").unlink()

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"==> {text}", flush=True)

    def archive_dsn(self, in_cluster: bool = False) -> str:
        """The operator's archive: from the host (its lab address), or from a pod (its Service's name)."""
        host, port = ("archive.monitoring.svc", 5432) if in_cluster else self.address("archive.monitoring.svc")
        return f"postgresql://{ARCHIVE_USER}:{self.archive_password}@{host}:{port}/{ARCHIVE_DATABASE}"

    def _write_state(self) -> None:
        state = {
            "control": self.control_url,
            "kubeconfig": str(self.kubeconfig),
            "kubectl": str(self.kubectl),
            "prometheus": self.prometheus.url if self.prometheus else "",
            "alertmanager": self.alertmanager.url if self.alertmanager else "",
            "pid": os.getpid(),
            "node": self.real,
            "operator": "cluster" if self.in_cluster_intake else "host",
        }
        (self.root / "lab.json").write_text(json.dumps(state, indent=2))

    # -- PostgreSQL and Redis ------------------------------------------------------------------

    def _seed_database(self) -> None:
        assert self.postgres
        with self.postgres.superuser(DATABASE) as admin:
            admin.execute(f"SET ROLE {DB_USER}")
            admin.execute(
                "CREATE TABLE IF NOT EXISTS conversations "
                "(id bigint PRIMARY KEY, user_id bigint, created_at timestamptz)"
            )
            admin.execute("CREATE INDEX IF NOT EXISTS conversations_user ON conversations (user_id)")
            admin.execute(
                "INSERT INTO conversations SELECT g, g % 97, now() FROM generate_series(1, 2000) g "
                "ON CONFLICT DO NOTHING"
            )

    def _app_connection(self) -> psycopg.Connection[Any]:
        """A connection as ISH Chat makes it: its role, its database, over TCP."""
        assert self.postgres
        return psycopg.connect(
            host=self.postgres.host, port=self.postgres.port, user=DB_USER, password=self.db_password,
            dbname=DATABASE, connect_timeout=2, autocommit=True,
        )  # fmt: skip

    def _postgres_metrics(self) -> str:
        assert self.postgres
        up, rows = 0, []
        with contextlib.suppress(psycopg.Error), self._app_connection() as conn:
            up = 1
            rows = conn.execute(
                "SELECT s.queryid::text, d.datname, sum(s.total_exec_time) / 1000.0, sum(s.calls) "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE s.queryid IS NOT NULL GROUP BY 1, 2"
            ).fetchall()
        parts = [ishchat.samples("pg_up", [({}, float(up))])]
        if rows:
            labelled = [({"queryid": q, "datname": d}, float(t)) for q, d, t, _ in rows]
            parts.append(ishchat.samples("pg_stat_statements_seconds_total", labelled, "counter"))
            calls = [({"queryid": q, "datname": d}, float(c)) for q, d, _, c in rows]
            parts.append(ishchat.samples("pg_stat_statements_calls_total", calls, "counter"))
        return "\n".join(parts)

    def _redis_metrics(self) -> str:
        """redis_exporter's redis_up: PING answered with PONG (raw, so no client retries outlast the scrape)."""
        assert self.redis
        up = 0.0
        with contextlib.suppress(OSError), socket.create_connection((self.redis.host, self.redis.port), 0.5) as conn:
            conn.settimeout(0.5)
            conn.sendall(b"PING\r\n")
            up = 1.0 if conn.recv(16).startswith(b"+PONG") else 0.0
        return ishchat.samples("redis_up", [({}, up)])

    # -- monitoring ----------------------------------------------------------------------------

    def _start_monitoring(self, token_file: Path) -> None:
        rule = yaml.safe_load((PACK / "alerting" / "prometheus-rule.yaml").read_text())
        groups = speed.rules(rule["spec"]["groups"], self.factor)
        prom_root = self.root / "prometheus"
        prom_root.mkdir(parents=True, exist_ok=True)
        (prom_root / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        lab, (am_host, am_port) = self.ip("lab.ishchat.svc"), self.address(ALERTMANAGER)
        # on a real node: the Services, which kube-proxy translates to the pods from this host too
        where = {
            name: self.service_ips.get(f"{name}.ishchat.svc") or self.ip(f"{name}.ishchat.svc")
            for name in ishchat.SERVICES
        }
        jobs = {f"ish-chat-{name}": f"{where[name]}:{port}" for name, port in ishchat.SERVICES.items()}
        jobs |= {job: f"{lab}:{port}" for job, port in ishchat.EXPORTER_PORTS.items()}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(prom_root / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{am_host}:{am_port}"]}]}]},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in jobs.items()
            ],
        }
        self.prometheus = Prometheus(prom_root, *self.address("prometheus.monitoring.svc"))
        self.prometheus.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.prometheus.start()
        am_config = yaml.safe_load((PACK / "alerting" / "alertmanager.yaml").read_text())
        self.alertmanager = Alertmanager(self.root / "alertmanager", *self.address(ALERTMANAGER))
        self.alertmanager.config.write_text(
            yaml.safe_dump(speed.alertmanager(am_config, self.intake_url, str(token_file)), sort_keys=False)
        )
        self.alertmanager.start()

    # -- the cluster ---------------------------------------------------------------------------

    def kube(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = os.environ | {"KUBECONFIG": str(self.kubeconfig)}
        done = subprocess.run(
            [str(self.kubectl), *args], input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and done.returncode:
            raise LabError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def policies(self) -> list[dict[str, Any]]:
        """The pack's RemediationPolicies at lab speed."""
        docs = []
        for path in sorted(PACK.glob("*.yaml")):
            doc = yaml.safe_load(path.read_text())
            if isinstance(doc, dict) and doc.get("kind") == "RemediationPolicy":
                docs.append(speed.policy(doc, self.factor))
        return docs

    def _apply_cluster(self) -> int:
        """Apply the CRDs, the consent policy, namespace, workloads, Secrets, on-call's approver role and
        the pack; the number of policies applied."""
        if self.helm is not None:  # the chart installs the CRDs and the admission policies itself
            self._install_operator()
        else:
            self.kube("apply", "-k", str(ROOT / "crds"))
            self.kube("apply", "-k", str(ROOT / "manifests" / "consent"))
        self.kube(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/incidents.remediation.ishchat.io", "crd/remediationpolicies.remediation.ishchat.io",
        )  # fmt: skip
        docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
        image = ""
        if self.node is not None:
            lab_image = images.lab_image()
            self.node.import_image(lab_image.archive)
            image = lab_image.ref
            docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}})
            docs += [_host_service(name, PORTS[name][0]) for name in HOST_SERVICES]
            docs.append(_host_service(EXAMPLES_HOST, EXAMPLES_PORT))
        for name, (kind, replicas) in WORKLOADS.items():
            if image and name in ishchat.SERVICES:
                docs += _service_workload(name, replicas, image, f"http://lab.{NAMESPACE}.svc:{CONTROL_PORT}")
                continue
            docs.append(_workload(name, kind, replicas))
            if kind == "StatefulSet":
                docs.append(_headless_service(f"{name}-pods" if image else name, name))
        docs.append(_approvers(ONCALL_GROUP))
        docs.append(_secret("ishchat-postgres", {"password": self.db_password}))
        hooks = f"http://lab.{NAMESPACE}.svc:{CONTROL_PORT}" if self.helm is not None else self.control_url
        docs.append(_secret("ishchat-notify", {"webhook": f"{hooks}/hooks/on-call"}))
        policies = self.policies()
        docs += policies
        self.kube("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        # Incidents of an earlier lab (same control plane) belong to alerts this lab never saw
        self.kube("delete", "incidents", "--all", "-n", NAMESPACE, "--wait=false")
        for name, (kind, _) in WORKLOADS.items():
            self.kube("rollout", "status", f"{kind.lower()}/{name}", "-n", NAMESPACE, "--timeout=120s")
        if self.node is not None:
            self._expose()
        return len(policies)

    def _expose(self) -> None:
        """Note each Service's IP; pods reach the host's servers through theirs (a DNAT rule on the node)."""
        assert self.node is not None
        for name in (*HOST_SERVICES, *(f"{s}.{NAMESPACE}.svc" for s in ishchat.SERVICES)):
            service, namespace = name.split(".")[:2]
            found = json.loads(self.kube("get", "service", service, "-n", namespace, "-o", "json").stdout)
            self.service_ips[name] = found["spec"]["clusterIP"]
        for name in HOST_SERVICES:
            self.node.expose(self.service_ips[name], PORTS[name][0], self.ip(name), PORTS[name][0])
        demo = json.loads(self.kube("get", "service", "demo", "-n", "default", "-o", "json").stdout)
        self.node.expose(demo["spec"]["clusterIP"], EXAMPLES_PORT, "127.0.0.1", EXAMPLES_PORT)

    def _install_operator(self) -> None:
        """The operator as users run it: its image, the chart, two replicas, its ServiceAccount and RBAC."""
        assert self.node is not None and self.helm is not None
        started = time.monotonic()
        image = images.operator_image()
        self._say(f"operator image {image.ref} ready in {time.monotonic() - started:.1f}s")
        self.kube("create", "namespace", NAMESPACE, check=False)
        self.kube("apply", "-n", NAMESPACE, "-k", str(ROOT / "manifests" / "namespace-access"))
        self.kube("create", "namespace", incluster.NAMESPACE, check=False)
        secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": ARCHIVE_SECRET, "namespace": incluster.NAMESPACE},
                  "stringData": {"dsn": self.archive_dsn(in_cluster=True)}}  # fmt: skip
        self.kube("apply", "-f", "-", stdin=json.dumps(secret))
        values = [
            f"--set=archive.dsnSecret.name={ARCHIVE_SECRET}",
            f"--set=intake.defaultNamespace={NAMESPACE}",
            "--set-json=intake.namespaces=" + json.dumps([NAMESPACE]),
            "--set-json=extraArgs=" + json.dumps(["--log-format=plain", "--resolved-ttl=never"]),
            # what a lab with a host operator applied with kubectl on this cluster before, the release takes over
            "--take-ownership",
            "--force-conflicts",
        ]
        started = time.monotonic()
        incluster.install(self.helm, self.kubectl, self.node, image, values=values, token=self.token)
        self.in_cluster_intake = incluster.intake_url(self.kubectl, self.kubeconfig)
        self.kube(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/incidents.remediation.ishchat.io", "crd/remediationpolicies.remediation.ishchat.io",
        )  # fmt: skip
        self._say(f"operator installed by its Helm chart in {time.monotonic() - started:.1f}s: 2 replicas on the node")

    def _kubelet_loop(self) -> None:
        """Poll the workloads: a new restartedAt brings the service back; pods feed cAdvisor metrics."""
        api = kubernetes.config.new_client_from_config(str(self.kubeconfig))  # type: ignore[no-untyped-call]
        seen: dict[str, str | None] = {}
        ticks = 0
        while not self._stopping.wait(0.5):
            ticks += 1
            if self.log_server is not None and ticks % 10 == 1:
                self._point_node_at_logs(api)
            try:
                state = self._workload_state(api)
            except (kubernetes.client.ApiException, OSError, ValueError, KeyError, urllib3.exceptions.HTTPError):
                continue
            for name, (stamp, _) in state.items():
                if name in seen and stamp != seen[name]:
                    self._restart(name)
                seen[name] = stamp
            if self.sim is not None:
                self.sim.set_pods({name: pods for name, (_, pods) in state.items()})

    def _workload_state(self, api: kubernetes.client.ApiClient) -> dict[str, tuple[str | None, list[str]]]:
        def items(call: Any) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = json.loads(call(NAMESPACE, _request_timeout=5, _preload_content=False).data)[
                "items"
            ]
            return found

        apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
        state: dict[str, tuple[str | None, list[str]]] = {}
        for item in items(apps.list_namespaced_deployment) + items(apps.list_namespaced_stateful_set):
            annotations = item["spec"]["template"].get("metadata", {}).get("annotations") or {}
            state[item["metadata"]["name"]] = (annotations.get(RESTART_ANNOTATION), [])
        for pod in items(core.list_namespaced_pod):
            app = (pod["metadata"].get("labels") or {}).get("app")
            running = pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
            if app in state and running:
                state[app][1].append(pod["metadata"]["name"])
        return state

    def _point_node_at_logs(self, api: kubernetes.client.ApiClient) -> None:
        """Name the log server in the kwok node's status (again, should kwok have rewritten it)."""
        assert self.log_server is not None
        wanted = self.log_server.node_status()
        with contextlib.suppress(kubernetes.client.ApiException, OSError, urllib3.exceptions.HTTPError):
            core = kubernetes.client.CoreV1Api(api)
            raw: Any = core.read_node_status(NODE_NAME, _request_timeout=5, _preload_content=False)
            node = json.loads(raw.data)
            if node["status"].get("daemonEndpoints") != wanted["daemonEndpoints"]:
                core.patch_node_status(NODE_NAME, {"status": wanted}, _request_timeout=5)

    def _pod_logs(self, namespace: str, pod: str, container: str) -> str | None:
        """What the workload's container would have logged, given the lab's state."""
        if namespace != NAMESPACE or container not in WORKLOADS:
            return None
        lines = [f"INFO {container} started", f"INFO {container} ready"]
        sim = self.sim
        if container in ("postgres", "redis"):
            server = self.postgres if container == "postgres" else self.redis
            if server is not None and not server.running:
                lines += (
                    [
                        "LOG:  received fast shutdown request",
                        "FATAL:  terminating connection due to administrator command",
                    ]
                    if container == "postgres"
                    else ["# User requested shutdown...", "# WARNING Redis is now ready to exit, bye bye..."]
                )
        elif sim is not None:
            if container in sim.down:
                lines += [f"ERROR {container}: unhandled exception in the request loop", "ERROR listener closed"]
            if container == "instance-manager" and sim.memory_ratio(container) > 0.9:
                lines += ["WARNING heap at 95% of the limit", "ERROR MemoryError while caching provider responses"]
        return "\n".join(lines) + "\n"

    def _restart(self, name: str) -> None:
        server: Server | None = {"postgres": self.postgres, "redis": self.redis}.get(name)
        if server is not None:
            if not server.running:
                server.start()
        elif self.real:
            self.crashed.discard(name)  # the node's kubelet replaced the broken containers itself
        elif self.sim is not None:
            self.sim.restarted(name)

    # -- the operator --------------------------------------------------------------------------

    def _start_operator(self, token_file: Path, output: Path | None) -> None:
        args = [sys.executable, "-m", "runbook_operator", "run", "--all-namespaces"]
        args += [f"--host-alias={alias}" for alias in self.host_aliases()]
        args += [f"--intake-address=127.0.0.1:{self.intake_port}", f"--intake-token-file={token_file}"]
        args += [f"--intake-namespace={NAMESPACE}", f"--metrics-address=127.0.0.1:{self.metrics_port}"]
        args += ["--log-format=plain", "--resolved-ttl=never"]
        env = os.environ | {"KUBECONFIG": str(self.kubeconfig), "RUNBOOK_ARCHIVE_DSN": self.archive_dsn()}
        log = output.open("ab") if output is not None else None
        try:
            self.operator = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
        finally:
            if log is not None:
                log.close()

    # -- faults --------------------------------------------------------------------------------

    def inject(self, fault: str) -> None:
        if fault not in FAULTS:
            raise KeyError(fault)
        if fault == "postgresql-down" and self.postgres:
            self.postgres.stop()
        elif fault == "redis-down" and self.redis:
            self.redis.stop()
        elif self.real and fault.removesuffix("-down") in ishchat.SERVICES:
            self._crash(fault.removesuffix("-down"))
        elif fault == "postgresql-slow-queries":
            self._slow_stop.clear()
            self._slow = threading.Thread(target=self._slow_queries, name="lab-slow-queries", daemon=True)
            self._slow.start()
        elif self.sim is not None:
            self.sim.inject(fault)

    def _crash(self, workload: str) -> None:
        """Break the request loop of every container of ``workload`` (only replacing them brings it back)."""
        pods = json.loads(self.kube("get", "pods", "-n", NAMESPACE, "-l", f"app={workload}", "-o", "json").stdout)
        port = ishchat.SERVICES[workload] + workload_server.FAULT_OFFSET
        for pod in pods["items"]:
            ip = pod.get("status", {}).get("podIP")
            if ip and not pod["metadata"].get("deletionTimestamp"):
                request = urllib.request.Request(f"http://{ip}:{port}/fault/crash", data=b"", method="POST")
                with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):
                    pass
        self.crashed.add(workload)

    def clear(self) -> None:
        """Undo every fault: servers back, slow queries stopped and forgotten, the simulation healthy."""
        self._slow_stop.set()
        if self._slow is not None:
            self._slow.join(10)
        for server in (self.postgres, self.redis):
            if server is not None and not server.running:
                server.start()
        if self.postgres is not None:
            with self.postgres.superuser(DATABASE) as admin:
                admin.execute("SELECT pg_stat_statements_reset()")
        if self.sim is not None:
            self.sim.clear()
        for name in sorted(self.crashed):  # containers the operator did not replace
            self.kube("rollout", "restart", f"deployment/{name}", "-n", NAMESPACE)
            self.kube("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, "--timeout=120s")
        self.crashed.clear()
        for name, (kind, replicas) in WORKLOADS.items():  # undo a scale-out
            self.kube("scale", f"{kind.lower()}/{name}", "-n", NAMESPACE, f"--replicas={replicas}")

    def _slow_queries(self) -> None:
        """The slow query, over and over (reconnecting while PostgreSQL is down) until cleared."""
        assert self.postgres
        while not self._slow_stop.is_set():
            try:
                with self._app_connection() as conn:
                    while not self._slow_stop.is_set():
                        conn.execute("SELECT count(*), pg_sleep(0.6) FROM conversations WHERE user_id = 7")
            except psycopg.Error:
                self._slow_stop.wait(1)

    def state(self) -> dict[str, Any]:
        sim = self.sim
        return {
            "faults": sorted(sim.faults if sim else ())
            + [f for f, s in (("postgresql-down", self.postgres), ("redis-down", self.redis)) if s and not s.running]
            + (["postgresql-slow-queries"] if self._slow and self._slow.is_alive() else []),
            "hooks": len(self.hooks),
        }


def running_lab(root: Path) -> dict[str, Any] | None:
    """The state of the lab running from ``root``, if its process is alive."""
    try:
        state: dict[str, Any] = json.loads((root / "lab.json").read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


# -- cluster objects ---------------------------------------------------------------------------


def _workload(name: str, kind: str, replicas: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name, "app.kubernetes.io/part-of": "ish-chat"}},
            "spec": {
                "containers": [
                    {
                        "name": name,
                        "image": f"ishchat/{name}:lab",  # never pulled: kwok runs the pods
                        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                    }
                ]
            },
        },
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": spec,
    }


def _headless_service(name: str, app: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"clusterIP": "None", "selector": {"app": app or name}, "ports": [{"port": 1, "name": "lab"}]},
    }


def _host_service(name: str, port: int) -> dict[str, Any]:
    """A Service without selector for a server on the host, as a cluster names a managed database."""
    service, namespace = name.split(".")[:2]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "runbook-lab"}},
        "spec": {"ports": [{"name": f"p{port}", "port": port, "targetPort": port}]},
    }


def _service_workload(name: str, replicas: int, image: str, world: str) -> list[dict[str, Any]]:
    """An ISH Chat service as a Deployment of the lab's image on the real node, behind its ClusterIP Service."""
    port = ishchat.SERVICES[name]
    container = {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-m", "runbook_lab.workload", name, "--world", world],
        "ports": [{"name": "http", "containerPort": port}],
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "10m", "memory": "32Mi"}},
        "securityContext": {"runAsUser": 65532, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    labels = {"app": name, "app.kubernetes.io/part-of": "ish-chat"}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {**placement(), "terminationGracePeriodSeconds": 2, "containers": [container]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": port}]},
        },
    ]


def _approvers(group: str) -> dict[str, Any]:
    """The binding every team makes: its on-call group may approve steps in its namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "runbook-approvers", "namespace": NAMESPACE},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "runbook-operator-approver",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        # the lab owns these Secrets and lends them to every policy of the pack
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {CONSENT_ANNOTATION: "*"}},
        "stringData": data,
    }


# -- the control API ---------------------------------------------------------------------------


def _serve_control(lab: Lab) -> Any:
    class Handler(ishchat.JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/lab":
                self.reply(200, lab.state() | {"available": FAULTS})
            elif self.path == "/hooks":
                self.reply(200, [{"hook": name, "body": body} for name, body in lab.hooks])
            elif self.path.startswith(ishchat.WORLD_PREFIX):
                self.world(None)
            else:
                self.reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = self.body()
            if self.path.startswith("/hooks/"):
                lab.hooks.append((self.path.removeprefix("/hooks/"), body))
                self.reply(200, {"ok": True})
            elif self.path.startswith("/lab/faults/"):
                fault = self.path.removeprefix("/lab/faults/")
                if fault not in FAULTS:
                    self.reply(404, {"error": f"unknown fault {fault!r}", "available": sorted(FAULTS)})
                    return
                lab.inject(fault)
                self.reply(200, {"injected": fault, "what": FAULTS[fault]})
            elif self.path == "/lab/clear":
                lab.clear()
                self.reply(200, {"cleared": True})
            elif self.path.startswith(ishchat.WORLD_PREFIX):
                self.world(body)
            else:
                self.reply(404, {"error": f"no route {self.path}"})

        def world(self, body: Any) -> None:
            """A service container's call (runbook_lab.workload) to the simulated world."""
            sim = lab.sim
            if sim is None:
                self.reply(503, {"error": "no world yet"})
            else:
                self.reply(*ishchat.world_route(sim, self.command, self.path, body))

    server = ishchat.Server((lab.ip("lab.ishchat.svc"), CONTROL_PORT), Handler)
    threading.Thread(target=server.serve_forever, args=(0.1,), name="lab-control", daemon=True).start()
    return server


@contextlib.contextmanager
def running(
    root: Path, kubeconfig: Path, kubectl: Path, operator_output: Path | None = None, **options: Any
) -> Iterator[Lab]:
    lab = Lab(root, kubeconfig, kubectl, **options)
    lab.up(operator_output)
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(root, ignore_errors=True)
