"""Benchmarks: runbook-operator against a Go controller-runtime peer and a minimal Kopf floor, on a real control plane.

    python bench/run.py [--sizes 100 1000] [--alerts 20 --burst 100] [--out docs/benchmarks.md] [--keep DIR]

Starts its own control plane (etcd, kube-apiserver, ... from tools/controlplane/build.sh)
in a temporary directory, applies crds/ and the ISH Chat pack (manifests/runbooks/ish-chat,
so runbook-operator starts with its twelve policies loaded), serves a DemoService
(restart_seconds=0), and for each size N and each operator (bench/baseline_operator.py,
the Go peer bench/peer built by bench/peer/build.sh, then runbook-operator): starts the
operator process against an admin kubeconfig, creates N Incidents at once (parallel POSTs
from a 16-thread pool, not kubectl), waits until all are Resolved, stops the operator and
deletes the Incidents. Then runbook-operator once more with its Alertmanager intake, for
alert -> first remediation call (the other two have no intake), and a pure-core
micro-benchmark (select_policy: 10,000 incidents against 1,000 policies). Writes the report.

How each figure is taken, in the same run:

* first status / resolved latency: a watch on the run's namespace, opened at the
  resourceVersion of a LIST taken before the first create, stamps every event with the
  local ``time.monotonic()``; each create is stamped with the same clock just before
  its POST. Latency = (first event whose ``.status.phase`` is set, or is ``Resolved``)
  - (that incident's POST stamp). ``metadata.creationTimestamp`` has one-second
  resolution, too coarse for these latencies, so it is not used.
* throughput: resolved / (last Resolved seen - first POST); if not all resolve within
  the wait (120 s + 0.5 s per incident), resolved / (end of the wait - first POST).
* API requests per incident: the apiserver's ``apiserver_request_total`` for
  resources ``incidents`` (group remediation.ishchat.io) and ``events``, after minus
  before, minus the bench's own requests (N POSTs and one WATCH), divided by N.
  The metric has no user-agent label; the only other clients of these resources are
  the control plane's own controllers (garbage collector, quota), whose long-lived
  WATCHes barely move the counters.
* operator peak RSS: ``VmHWM`` of /proc/PID/status when all are Resolved; CPU:
  utime+stime of /proc/PID/stat after minus before the creates, divided by N. Idle RSS:
  ``VmRSS`` once the operator is live and has had a second to settle, before the creates.
* alert -> first remediation call: the bench POSTs Alertmanager webhooks (one alert each) to
  runbook-operator's intake and serves the remediate step's target itself; latency = the
  target's ``time.monotonic()`` when the step's request for that incident arrives - the
  POST's stamp. One alert at a time (``--alerts`` of them, each waited for), then a burst
  of ``--burst`` POSTs at once from the 16-thread pool.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "lab"), str(ROOT)]  # the operator, the lab (its control plane,
# DemoService) and this folder as the package ``bench`` (its replay benchmark)

import kubernetes  # noqa: E402

from bench import replay as replay_bench  # noqa: E402
from runbook_lab.controlplane import ControlPlane, free_port  # noqa: E402
from runbook_lab.demo import DemoService  # noqa: E402

GROUP, VERSION = "remediation.ishchat.io", "v1alpha1"
OPERATORS = ("baseline", "peer", "runbook-operator")
NAMES = {"runbook-operator": "runbook-operator", "peer": "Go peer", "baseline": "Kopf floor"}
ALERT = "BenchAlert"  # the alert the intake runs' policy matches
PHASES = 4  # Diagnosing, Remediating, Verifying, Resolved
STEPS = 3  # diagnose, remediate, verify: one step each
CLIENT_THREADS = 16
IDLE_RSS_TARGET_MB = 90.0
MATCH_TARGET_MS = 1.0
REPLAY_TARGET_S = 10.0  # issue 25: 10,000 incidents x 100 policies (on every CPU; one process is the baseline)
X = "\u00d7"  # the multiplication sign, in the report


# -- results ----------------------------------------------------------------
@dataclass
class Run:
    operator: str
    size: int
    first_status: list[float] = field(default_factory=list)  # seconds, one per incident
    resolved: list[float] = field(default_factory=list)
    elapsed: float = 0.0  # first POST -> last Resolved
    requests: dict[str, float] = field(default_factory=dict)  # "resource[/sub] VERB" -> per incident
    peak_rss_mb: float = 0.0
    idle_rss_mb: float = 0.0  # after start, before the creates
    cpu_seconds: float = 0.0  # whole run, operator process
    plane_cpu_seconds: float = 0.0  # whole run, kube-apiserver + etcd

    @property
    def all_resolved(self) -> bool:
        return len(self.resolved) == self.size

    @property
    def throughput(self) -> float:
        return len(self.resolved) / self.elapsed if self.elapsed else 0.0

    @property
    def status_writes(self) -> float:
        return self.requests.get("incidents/status PATCH", 0.0)

    @property
    def cpu_ms_per_incident(self) -> float:
        return 1000.0 * self.cpu_seconds / self.size

    @property
    def plane_cpu_ms_per_incident(self) -> float:
        return 1000.0 * self.plane_cpu_seconds / self.size

    def api_per_incident(self) -> float:
        return sum(self.requests.values())


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))  # nearest rank
    return ordered[rank]


# -- the cluster side ----------------------------------------------------------
class Cluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.kubectl = plane.bin / "kubectl"
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(plane.kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = CLIENT_THREADS * 2
        self.api = kubernetes.client.ApiClient(config)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    def run_kubectl(self, *args: str) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        proc = subprocess.run([str(self.kubectl), *args], env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def install_crds(self) -> None:
        self.run_kubectl("apply", "-k", str(ROOT / "crds"))
        self.run_kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        deadline = time.monotonic() + 60  # the CRs are served a moment after Established
        while True:
            try:
                self.custom.list_cluster_custom_object(GROUP, VERSION, "incidents", limit=1)
                return
            except kubernetes.client.ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def install_pack(self) -> None:
        """The ISH Chat pack's twelve RemediationPolicies (namespace ishchat): idle RSS is taken with them loaded."""
        self.namespace("ishchat")
        self.run_kubectl("apply", "-k", str(ROOT / "manifests" / "runbooks" / "ish-chat"))

    def plane_cpu_seconds(self) -> float:
        """CPU used so far by the API server and etcd, the two control plane processes the operators load."""
        assert self.plane.state is not None
        return sum(cpu_seconds(self.plane.state.pids[name]) for name in ("kube-apiserver", "etcd"))

    def apiserver_counts(self) -> Counter[str]:
        """apiserver_request_total for incidents and events, keyed "resource[/subresource] VERB"."""
        state = self.plane.state
        assert state is not None
        context = ssl.create_default_context(cafile=str(self.plane.root / "pki" / "apiserver.crt"))
        request = urllib.request.Request(state.server + "/metrics")
        request.add_header("Authorization", f"Bearer {state.token}")
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            text = response.read().decode()
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            resource = labels.get("resource")
            if not (resource == "events" or (resource == "incidents" and labels.get("group") == GROUP)):
                continue
            key = resource + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            counts[f"{key} {labels.get('verb', '?')}"] += int(float(line.rsplit(" ", 1)[1]))
        return counts

    def namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.create_namespace(body)

    def policy(
        self, namespace: str, demo_url: str, alert: str = "BenchDown", target: str = "", body_json: Any = None
    ) -> None:
        """The bench policy: 3 HTTP steps against the DemoService (bench/peer/main.go does the same).

        ``target``/``body_json``: where the remediate step POSTs, and what (the intake runs
        send it to the bench's own RemediationTarget, naming the incident).
        """
        restart = {
            "url": f"{target or demo_url}/admin/restart",
            "json": {"service": "bench"} if body_json is None else body_json,
            "expectStatus": 202,
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RemediationPolicy",
            "metadata": {"name": "bench", "namespace": namespace},
            "spec": {
                "match": {"alerts": [alert]},
                "severity": "Critical",
                "diagnose": [{"name": "health", "action": "http.check", "with": {"url": f"{demo_url}/health"}}],
                "remediate": [{"name": "restart", "action": "http.request", "with": restart}],
                "settle": "0s",
                "verify": [{"name": "healthy-again", "action": "http.check", "with": {"url": f"{demo_url}/health"}}],
                "limits": {"maxAttempts": 1},
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "remediationpolicies", body)

    def delete_incidents(self, namespace: str) -> None:
        self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, "incidents")
        deadline = time.monotonic() + 120
        while self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "incidents", limit=1)["items"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"incidents in {namespace} were not deleted within 120s")
            time.sleep(0.25)


def settled_counts(cluster: Cluster, timeout: float = 120.0) -> Counter[str]:
    """apiserver_request_total once it stops moving: runbook-operator posts Events after the
    status writes, in the background, so some may still be on their way when all are Resolved."""
    deadline = time.monotonic() + timeout
    time.sleep(1.0)
    counts = cluster.apiserver_counts()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        again = cluster.apiserver_counts()
        if again == counts:
            break
        counts = again
    return counts


def incident(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Incident",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"alert": "BenchDown", "summary": "benchmark incident", "source": {"kind": "Manual"}},
    }


# -- the operator process ------------------------------------------------------
class OperatorProcess:
    def __init__(self, kind: str, kubeconfig: Path, log: Path, demo_url: str, extra: tuple[str, ...] = ()) -> None:
        self.kind, self.kubeconfig, self.log, self.demo_url, self.extra = kind, kubeconfig, log, demo_url, extra
        self.port, self.metrics_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        liveness = f"--liveness=http://127.0.0.1:{self.port}/healthz"
        if self.kind == "baseline":
            script = str(ROOT / "bench" / "baseline_operator.py")
            return [sys.executable, "-m", "kopf", "run", script, "--all-namespaces", "--standalone", liveness]
        if self.kind == "peer":  # its /healthz answers once its cache has synced
            return [str(peer_binary()), f"--health-address=127.0.0.1:{self.port}", f"--demo-url={self.demo_url}"]
        return [
            sys.executable, "-m", "runbook_operator", "run", "--all-namespaces", liveness,
            f"--metrics-address=127.0.0.1:{self.metrics_port}", "--resolved-ttl", "never", *self.extra,
        ]  # fmt: skip

    def start(self) -> None:
        pythonpath = os.pathsep.join(filter(None, [str(ROOT / "operator"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": pythonpath}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        deadline = time.monotonic() + 60
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not become live in 60s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def peak_rss_mb(self) -> float:
        return self._status_mb("VmHWM:")

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS:")

    def _status_mb(self, key: str) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- one measured run ----------------------------------------------------------
class Watcher(threading.Thread):
    """Stamps, with time.monotonic(), the first phase and the Resolved of each incident."""

    def __init__(self, cluster: Cluster, namespace: str, resource_version: str) -> None:
        super().__init__(name=f"watch-{namespace}", daemon=True)
        self.cluster, self.namespace, self.rv = cluster, namespace, resource_version
        self.first_phase: dict[str, float] = {}
        self.resolved: dict[str, float] = {}
        self.changed = threading.Condition()
        self.stopping = False
        self.error: BaseException | None = None
        self.watches = 0

    def run(self) -> None:
        try:
            while not self.stopping:
                self.watches += 1
                watch = kubernetes.watch.Watch()
                stream = watch.stream(
                    self.cluster.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, "incidents",
                    resource_version=self.rv, timeout_seconds=5, allow_watch_bookmarks=True,
                )  # fmt: skip
                for event in stream:
                    now = time.monotonic()
                    obj = event["object"]
                    self.rv = obj["metadata"]["resourceVersion"]
                    if event["type"] not in ("ADDED", "MODIFIED"):
                        continue
                    name, phase = obj["metadata"]["name"], (obj.get("status") or {}).get("phase")
                    with self.changed:
                        if phase and name not in self.first_phase:
                            self.first_phase[name] = now
                        if phase == "Resolved" and name not in self.resolved:
                            self.resolved[name] = now
                            self.changed.notify_all()
                    if self.stopping:
                        watch.stop()
        except BaseException as err:  # reported by the waiting side
            self.error = err
            with self.changed:
                self.changed.notify_all()

    def wait_resolved(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.resolved) < count and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        if self.error is not None:
            raise RuntimeError(f"watch failed: {self.error}")
        return True


def measure(cluster: Cluster, kind: str, size: int, workdir: Path, demo_url: str) -> Run:
    namespace = f"bench-{kind}-{size}-{os.getpid() % 10000}"
    cluster.namespace(namespace)
    cluster.policy(namespace, demo_url)
    operator = OperatorProcess(kind, cluster.plane.kubeconfig, workdir / f"{kind}-{size}.log", demo_url)
    operator.start()
    run = Run(kind, size)
    try:
        time.sleep(1.0)  # let the operator's watches and the policy index settle
        run.idle_rss_mb = operator.rss_mb()
        rv = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "incidents")["metadata"][
            "resourceVersion"
        ]
        watcher = Watcher(cluster, namespace, rv)
        watcher.start()
        before, cpu_before, plane_before = (
            cluster.apiserver_counts(),
            operator.cpu_seconds(),
            cluster.plane_cpu_seconds(),
        )
        posted: dict[str, float] = {}
        names = [f"inc-{i:05d}" for i in range(size)]

        def create(name: str) -> None:
            posted[name] = time.monotonic()
            cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "incidents", incident(namespace, name)
            )

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(create, names))
        done = watcher.wait_resolved(size, timeout=120 + size * 0.5)
        gave_up = time.monotonic()
        watcher.stopping = True
        watcher.join(10)
        after = settled_counts(cluster)  # Events still in flight land before the second scrape
        run.cpu_seconds = operator.cpu_seconds() - cpu_before  # their CPU counts too
        run.plane_cpu_seconds = cluster.plane_cpu_seconds() - plane_before
        run.peak_rss_mb = operator.peak_rss_mb()  # the high-water mark, Events included
        with watcher.changed:
            run.first_status = [watcher.first_phase[n] - posted[n] for n in names if n in watcher.first_phase]
            run.resolved = [watcher.resolved[n] - posted[n] for n in names if n in watcher.resolved]
            last = max(watcher.resolved.values(), default=started)
        run.elapsed = (last if done else gave_up) - started  # a run that timed out counts its whole wait
        own = Counter({"incidents POST": size, "incidents WATCH": watcher.watches})
        diff = Counter({k: after[k] - before.get(k, 0) for k in after}) - own
        run.requests = {k: v / size for k, v in sorted(diff.items()) if v > 0}
        if not done:
            print(f"  {kind} N={size}: only {len(run.resolved)} of {size} resolved in time", file=sys.stderr)
    finally:
        operator.stop()
        cluster.delete_incidents(namespace)
    return run


# -- alert -> first remediation call, through the intake --------------------------
class RemediationTarget:
    """The remediate step's target in the intake runs: stamps the first request for each incident.

    The step POSTs ``{"incident": "{{ incident.name }}"}``; the answer is 202, as the DemoService's.
    """

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with target.changed:
                    target.arrived.setdefault(str(body.get("incident")), now)
                    target.changed.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="remediation-target", daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def wait(self, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(n in self.arrived for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AlertRun:
    single: list[float] = field(default_factory=list)  # seconds, one per alert sent alone
    burst: list[float] = field(default_factory=list)  # seconds, one per alert of the burst
    singles: int = 0
    burst_size: int = 0


def alert_latency(cluster: Cluster, workdir: Path, demo_url: str, singles: int, burst: int) -> AlertRun:
    """runbook-operator with its intake: Alertmanager webhook POST -> Incident -> the remediate step's request."""
    from runbook_operator.domain.alerts import incident_name

    namespace = f"bench-alerts-{os.getpid() % 10000}"
    cluster.namespace(namespace)
    target = RemediationTarget()
    cluster.policy(namespace, demo_url, alert=ALERT, target=target.url, body_json={"incident": "{{ incident.name }}"})
    intake = free_port()
    extra = (f"--intake-address=127.0.0.1:{intake}", "--intake-insecure", f"--intake-namespace={namespace}")
    operator = OperatorProcess("runbook-operator", cluster.plane.kubeconfig, workdir / "intake.log", demo_url, extra)
    result = AlertRun(singles=singles, burst_size=burst)
    url = f"http://127.0.0.1:{intake}/api/v1/alerts/alertmanager"
    sent: dict[str, float] = {}

    def post(i: int) -> str:
        # the incident's name keeps only the first 10 hex digits: they must differ per alert
        fingerprint, starts_at = hashlib.sha256(f"bench-alert-{i}".encode()).hexdigest()[:16], "2026-01-01T00:00:00Z"
        alert = {
            "status": "firing",
            "labels": {"alertname": ALERT, "severity": "critical", "service": "bench"},
            "annotations": {"summary": "benchmark alert"},
            "startsAt": starts_at,
            "fingerprint": fingerprint,
        }
        payload = {"version": "4", "status": "firing", "receiver": "bench", "alerts": [alert]}
        request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        name = incident_name(ALERT, fingerprint, starts_at)
        sent[name] = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        return name

    operator.start()
    try:
        time.sleep(1.0)  # the policy index and the intake settle, as in measure()
        for i in range(singles):
            name = post(i)
            if not target.wait([name], timeout=60):
                raise RuntimeError(f"alert {i}: no remediation call within 60s (see {operator.log})")
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            names = list(pool.map(post, range(singles, singles + burst)))
        if not target.wait(names, timeout=120 + burst * 0.5):
            done = len(set(names) & set(target.arrived))
            print(f"  intake burst: only {done} of {burst} remediated in time", file=sys.stderr)
        with target.changed:
            latency = {n: target.arrived[n] - sent[n] for n in sent if n in target.arrived}
        result.single = [latency[n] for n in list(sent)[:singles] if n in latency]
        result.burst = [latency[n] for n in names if n in latency]
    finally:
        operator.stop()
        target.stop()
        cluster.delete_incidents(namespace)
    return result


# -- the pure-core micro-benchmark --------------------------------------------
def _matching_inputs(incidents: int, policies: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``policies`` valid candidates in one namespace and ``incidents`` random incidents for them."""
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.domain.model import Incident, Policy
    from runbook_operator.domain.parsing import parse_policy

    registry = default_registry()
    rng = random.Random(seed)
    alerts = [f"Alert{i}" for i in range(200)]
    severities = ["Critical", "High", "Medium", "Low"]
    step = {"name": "c", "action": "http.check", "with": {"url": "http://127.0.0.1:1/health"}}
    candidates = []
    for i in range(policies):
        match: dict[str, Any] = {"alerts": rng.sample(alerts, 3), "severities": rng.sample(severities, 2)}
        if i % 3 == 0:
            match["labelSelector"] = {"matchLabels": {"service": f"svc{rng.randrange(20)}"}}
        body = {
            "metadata": {"name": f"p{i:04d}", "namespace": "ns", "generation": 1},
            "spec": {"match": match, "priority": rng.randrange(5), "verify": [step]},
        }
        parsed = parse_policy(body, registry.check)
        assert isinstance(parsed, Policy), parsed
        candidates.append(parsed)
    batch = [
        Incident.from_body(
            {
                "metadata": {"name": f"i{i}", "namespace": "ns", "generation": 1},
                "spec": {
                    "alert": rng.choice(alerts),
                    "severity": rng.choice(severities),
                    "labels": {"service": f"svc{rng.randrange(20)}"},
                },
            }
        )
        for i in range(incidents)
    ]
    return candidates, batch


def matching_benchmark(incidents: int = 10_000, policies: int = 1_000, seed: int = 7) -> float:
    """Milliseconds per incident of select_policy against ``policies`` candidates in one namespace.

    The way the operator calls it: the candidates are indexed once (a ``PolicySet``, rebuilt
    only when the policies change) and every incident is selected against that index.
    """
    from runbook_operator.domain.matching import PolicySet, select_policy

    candidates, batch = _matching_inputs(incidents, policies, seed)
    indexed = PolicySet(candidates)
    started = time.perf_counter()
    chosen = sum(select_policy(one, indexed).chosen is not None for one in batch)
    elapsed = time.perf_counter() - started
    assert chosen > 0
    return 1000.0 * elapsed / incidents


def matching_extras(incidents: int = 10_000, policies: int = 1_000, seed: int = 7) -> dict[str, float]:
    """Milliseconds: building the index once, select_policy on a plain list (no index), and
    reading every loser's reason (``Selection.rejected``, what ``runbook-operator plan`` prints)."""
    from runbook_operator.domain.matching import PolicySet, select_policy

    candidates, batch = _matching_inputs(incidents, policies, seed)
    started = time.perf_counter()
    indexed = PolicySet(candidates)
    build = time.perf_counter() - started
    started = time.perf_counter()
    for one in batch:
        select_policy(one, candidates)
    plain = (time.perf_counter() - started) / len(batch)
    sample = batch[:1000]
    started = time.perf_counter()
    for one in sample:
        assert len(select_policy(one, indexed).rejected) >= policies - 1
    explained = (time.perf_counter() - started) / len(sample)
    return {"build": 1000.0 * build, "plain": 1000.0 * plain, "explained": 1000.0 * explained}


# -- the report ----------------------------------------------------------------
@dataclass
class Row:
    figure: str
    ours: float
    peer: float | None
    base: float | None
    unit: str
    target: str = ""
    met: bool | None = None


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms" and value < 10:
        return f"{value:.2f} ms" if value >= 0.1 else f"{value * 1000:.1f} µs"
    return f"{value:,.1f} {unit}".strip() if abs(value) < 1000 else f"{value:,.0f} {unit}".strip()


def _ratio(ours: float, other: float | None) -> str:
    return f"{ours / other:.2f}{X}" if other else "—"


# issue 15's targets, as ratios to the Go peer in the same run: (figure suffix, bound, at most?)
PEER_TARGETS = {
    "throughput": (0.9, False),
    "create → Resolved, p50": (1.3, True),
    "create → first status, p50": (1.0, True),
    "operator CPU per incident": (2.0, True),
    "operator peak RSS": (2.0, True),
}


def rows_for(size: int, runs: dict[str, Run]) -> list[Row]:
    """One size's figures for runbook-operator, the Go peer and the Kopf floor (the runs by kind)."""
    ours, peer, base = runs["runbook-operator"], runs["peer"], runs["baseline"]
    ms = 1000.0

    def row(figure: str, value: Any, unit: str = "") -> Row:
        return Row(f"N={size}: {figure}", value(ours), value(peer), value(base), unit)

    rows = [
        row("all incidents Resolved", lambda r: float(len(r.resolved))),
        row("create → first status, p50", lambda r: ms * percentile(r.first_status, 50), "ms"),
        row("create → first status, p99", lambda r: ms * percentile(r.first_status, 99), "ms"),
        row("create → Resolved, p50", lambda r: ms * percentile(r.resolved, 50), "ms"),
        row("create → Resolved, p99", lambda r: ms * percentile(r.resolved, 99), "ms"),
        row("throughput", lambda r: r.throughput, "incidents/s"),
        row("status writes per incident", lambda r: r.status_writes),
        row("API requests per incident (incidents + events)", lambda r: r.api_per_incident()),
        row("operator idle RSS after start (ISH Chat pack applied)", lambda r: r.idle_rss_mb, "MB"),
        row("operator peak RSS", lambda r: r.peak_rss_mb, "MB"),
        row("operator CPU per incident", lambda r: r.cpu_ms_per_incident, "ms"),
        row("API server + etcd CPU per incident", lambda r: r.plane_cpu_ms_per_incident, "ms"),
    ]
    for one in rows:
        figure = one.figure.split(": ", 1)[1]
        if figure in PEER_TARGETS:
            bound, at_most = PEER_TARGETS[figure]
            one.target = f"{'≤' if at_most else '≥'} {bound:g}{X} Go peer"
            limit = bound * (one.peer or 0)
            one.met = one.ours <= limit if at_most else one.ours >= limit
        elif figure == "status writes per incident":
            one.target, one.met = f"≤ phases + finished steps = {PHASES + STEPS}", one.ours <= PHASES + STEPS
        elif figure.startswith("operator idle RSS"):
            one.target, one.met = f"≤ {IDLE_RSS_TARGET_MB:g} MB", one.ours <= IDLE_RSS_TARGET_MB
    rows[0].met = all(r.all_resolved for r in (ours, peer, base))
    rows[0].target = f"all {size}"
    return rows


def alert_rows(alerts: AlertRun) -> list[Row]:
    """runbook-operator only: the peer and the floor have no intake."""
    ms = 1000.0
    rows = []
    runs = ((f"1 alert at a time ({alerts.singles})", alerts.single), (f"burst of {alerts.burst_size}", alerts.burst))
    for label, values in runs:
        for q in (50, 99):
            figure = f"alert → first remediation call, {label}, p{q}"
            rows.append(Row(figure, ms * percentile(values, q), None, None, "ms"))
    rows.append(
        Row(
            f"alerts remediated (of {alerts.singles + alerts.burst_size})",
            float(len(alerts.single) + len(alerts.burst)),
            None,
            None,
            "",
            f"all {alerts.singles + alerts.burst_size}",
            len(alerts.single) + len(alerts.burst) == alerts.singles + alerts.burst_size,
        )
    )
    return rows


def render(
    runs: dict[tuple[str, int], Run],
    matching_ms: float,
    command: str,
    seconds: float,
    matching: dict[str, float] | None = None,
    alerts: AlertRun | None = None,
    replays: list[Any] | None = None,
) -> tuple[str, list[Row]]:
    rows: list[Row] = []
    sizes = sorted({s for _, s in runs})
    for size in sizes:
        rows += rows_for(size, {kind: runs[(kind, size)] for kind in OPERATORS})
    if alerts is not None:
        rows += alert_rows(alerts)
    rows.append(
        Row(
            f"select_policy: 10,000 incidents {X} 1,000 policies, per incident",
            matching_ms,
            None,
            None,
            "ms",
            f"≤ {MATCH_TARGET_MS:g} ms",
            matching_ms <= MATCH_TARGET_MS,
        )
    )
    if matching:
        for figure, key in (
            ("select_policy: index of 1,000 policies, built once per policy change", "build"),
            ("select_policy on a plain list (no index), 1,000 policies, per incident", "plain"),
            ("select_policy + every loser's reason (`plan`), 1,000 policies, per incident", "explained"),
        ):
            rows.append(Row(figure, matching[key], None, None, "ms"))
    rows += replay_rows(replays or [])
    lines = [
        "| figure | runbook-operator | Go peer | Kopf floor | ÷ Go peer | ÷ Kopf floor | target | met? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.figure} | {_fmt(row.ours, row.unit)} | {_fmt(row.peer, row.unit)} | {_fmt(row.base, row.unit)} | "
            f"{_ratio(row.ours, row.peer)} | {_ratio(row.ours, row.base)} | {row.target or '—'} | {met} |"
        )
    if alerts is not None:
        lines += [
            "",
            "Alert → first remediation call: runbook-operator only (the Go peer and the Kopf floor have no "
            "Alertmanager intake); Alertmanager webhook POST to the intake → Incident → the remediate "
            "step's request received by the bench's target, through the same 3-step policy.",
        ]
    requests = ["", "API requests per incident by verb (apiserver_request_total, bench's own requests removed):", ""]
    requests += ["| run | request | " + " | ".join(NAMES[k] for k in reversed(OPERATORS)) + " |", "|---" * 5 + "|"]
    for size in sizes:
        per_kind = [runs[(kind, size)].requests for kind in reversed(OPERATORS)]
        for key in sorted(set().union(*per_kind)):
            counts = " | ".join(f"{one.get(key, 0):.2f}" for one in per_kind)
            requests.append(f"| N={size} | {key} | {counts} |")
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    header = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"{int(meminfo) / 1024 / 1024:.0f} GiB, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}; the control plane, the three operators, the DemoService and the bench share the "
        f"machine (load average at the end, 1 / 5 / 15 min: {load}). Command: `{command}` ({seconds:.0f} s).",
        "",
    ]
    return "\n".join(header + lines + requests) + "\n", rows


def replay_rows(results: list[Any]) -> list[Row]:
    """``runbook-operator replay`` (bench/replay.py): seconds for the whole history, per case."""
    rows = []
    for r in results:
        figure = (f"replay: {r.incidents:,} incidents {X} {r.policies} policies, {r.case}, `--output {r.output}`, "
                  f"{r.jobs} process{'es' if r.jobs > 1 else ''} ({r.replayed:,} replayed)")  # fmt: skip
        bound = REPLAY_TARGET_S * r.incidents / 10_000
        parallel = r.jobs > 1
        rows.append(Row(figure, r.seconds, None, None, "s", f"< {bound:g} s" if parallel else "", r.seconds < bound
                        if parallel else None))  # fmt: skip
    return rows


def write_report(path: Path, table: str, rows: list[Row]) -> None:
    """Replace the generated section of path (between the markers), keeping the prose around it."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    path.write_text(f"{head}{begin}\n{table}{end}{tail}")


# -- the whole thing -----------------------------------------------------------
def _built(script: str) -> Path:
    """The path a build script prints last (it builds once into the cache, then only prints)."""
    build = subprocess.run([str(ROOT / script)], stdout=subprocess.PIPE, text=True, check=True)
    return Path(build.stdout.strip().splitlines()[-1])


def bin_dir() -> Path:
    return _built("tools/controlplane/build.sh")


def peer_binary() -> Path:
    return _built("bench/peer/build.sh")


def run_all(
    sizes: list[int],
    workdir: Path,
    operators: tuple[str, ...] = OPERATORS,
    log: Any = print,
    alerts: tuple[int, int] | None = (20, 100),
) -> tuple[dict[tuple[str, int], Run], AlertRun | None]:
    """The runs by (operator, size), then ``alerts`` (single alerts, burst size) through the intake."""
    if "peer" in operators:
        peer_binary()  # built (once) before the control plane starts, so a cold build is not timed with it
    plane = ControlPlane(workdir / "controlplane", bin_dir())
    started = time.monotonic()
    plane.up()
    log(f"control plane up in {time.monotonic() - started:.1f}s ({plane.root})")
    demo = DemoService(restart_seconds=0).start()
    runs: dict[tuple[str, int], Run] = {}
    latency: AlertRun | None = None
    try:
        cluster = Cluster(plane)
        cluster.install_crds()
        cluster.install_pack()
        for size in sizes:
            for kind in operators:
                run = measure(cluster, kind, size, workdir, demo.url)
                runs[(kind, size)] = run
                log(
                    f"{kind:>16} N={size}: {len(run.resolved)}/{size} resolved, "
                    f"first status p50 {1000 * percentile(run.first_status, 50):.0f} ms, "
                    f"resolved p50 {1000 * percentile(run.resolved, 50):.0f} ms, {run.throughput:.1f}/s, "
                    f"{run.status_writes:.2f} status writes, RSS {run.peak_rss_mb:.0f} MB, "
                    f"CPU {run.cpu_ms_per_incident:.1f} ms/incident, "
                    f"API server + etcd {run.plane_cpu_ms_per_incident:.1f} ms/incident"
                )
                log(f"{'':>16} requests per incident: {json.dumps({k: round(v, 2) for k, v in run.requests.items()})}")
        if alerts is not None:
            latency = alert_latency(cluster, workdir, demo.url, *alerts)
            log(
                f"{'intake':>16}: alert -> first remediation call p50/p99 {1000 * percentile(latency.single, 50):.0f}/"
                f"{1000 * percentile(latency.single, 99):.0f} ms one at a time, "
                f"{1000 * percentile(latency.burst, 50):.0f}/{1000 * percentile(latency.burst, 99):.0f} ms "
                f"in a burst of {latency.burst_size}"
            )
    finally:
        demo.stop()
        plane.down()
    return runs, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="incident counts (default 100 1000)")
    parser.add_argument("--alerts", type=int, default=20, help="alerts sent one at a time to the intake (default 20)")
    parser.add_argument("--burst", type=int, default=100, help="alerts sent at once to the intake (default 100)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the report to update")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs), not a temporary one")
    args = parser.parse_args(argv)
    command = "python bench/run.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep.resolve()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        runs, alerts = run_all(args.sizes, workdir, alerts=(args.alerts, args.burst))
    matching_ms, matching = matching_benchmark(), matching_extras()
    print(f"select_policy: {matching_ms * 1000:.1f} µs per incident (10,000 incidents {X} 1,000 policies)")
    replays = replay_bench.run()
    table, rows = render(runs, matching_ms, command, time.monotonic() - started, matching, alerts, replays)
    write_report(args.out, table, rows)
    print(table)
    missed = [r.figure for r in rows if r.met is False]
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
