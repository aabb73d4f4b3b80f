"""Benchmarks: runbook-operator against a minimal Kopf operator, on a real control plane.

    python bench/run.py [--sizes 100 1000] [--out docs/benchmarks.md] [--keep DIR]

Starts its own control plane (etcd, kube-apiserver, ... from tools/controlplane/build.sh)
in a temporary directory, applies crds/, serves a DemoService (restart_seconds=0), and for
each size N and each operator (bench/baseline_operator.py, then runbook-operator):
starts the operator process against an admin kubeconfig, creates N Incidents at once
(parallel POSTs from a 16-thread pool, not kubectl), waits until all are Resolved,
stops the operator and deletes the Incidents. Then a pure-core micro-benchmark
(select_policy: 10,000 incidents against 1,000 policies). Writes the report.

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
  utime+stime of /proc/PID/stat after minus before the creates, divided by N.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "lab")]  # the operator and the lab (its control plane, DemoService)

import kubernetes  # noqa: E402

from runbook_lab.controlplane import ControlPlane, free_port  # noqa: E402
from runbook_lab.demo import DemoService  # noqa: E402

GROUP, VERSION = "remediation.ishchat.io", "v1alpha1"
OPERATORS = ("baseline", "runbook-operator")
PHASES = 4  # Diagnosing, Remediating, Verifying, Resolved
STEPS = 3  # diagnose, remediate, verify: one step each
CLIENT_THREADS = 16
RSS_TARGET_MB = 150.0
MATCH_TARGET_MS = 1.0
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

    def policy(self, namespace: str, demo_url: str) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RemediationPolicy",
            "metadata": {"name": "bench", "namespace": namespace},
            "spec": {
                "match": {"alerts": ["BenchDown"]},
                "severity": "Critical",
                "diagnose": [{"name": "health", "action": "http.check", "with": {"url": f"{demo_url}/health"}}],
                "remediate": [
                    {
                        "name": "restart",
                        "action": "http.request",
                        "with": {"url": f"{demo_url}/admin/restart", "json": {"service": "bench"}, "expectStatus": 202},
                    }
                ],
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
    def __init__(self, kind: str, kubeconfig: Path, log: Path) -> None:
        self.kind, self.kubeconfig, self.log = kind, kubeconfig, log
        self.port, self.metrics_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        liveness = f"--liveness=http://127.0.0.1:{self.port}/healthz"
        if self.kind == "baseline":
            script = str(ROOT / "bench" / "baseline_operator.py")
            return [sys.executable, "-m", "kopf", "run", script, "--all-namespaces", "--standalone", liveness]
        return [
            sys.executable, "-m", "runbook_operator", "run", "--all-namespaces", liveness,
            f"--metrics-address=127.0.0.1:{self.metrics_port}", "--resolved-ttl", "never",
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
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
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
    operator = OperatorProcess(kind, cluster.plane.kubeconfig, workdir / f"{kind}-{size}.log")
    operator.start()
    run = Run(kind, size)
    try:
        time.sleep(1.0)  # let the operator's watches and the policy index settle
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


# -- the pure-core micro-benchmark --------------------------------------------
def _matching_inputs(incidents: int, policies: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``policies`` valid candidates in one namespace and ``incidents`` random incidents for them."""
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.domain.model import Incident, Policy, parse_policy

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


def rows_for(size: int, ours: Run, base: Run) -> list[Row]:
    ms = 1000.0
    rows = [
        Row(f"N={size}: all incidents Resolved", float(len(ours.resolved)), float(len(base.resolved)), ""),
        Row(
            f"N={size}: create → first status, p50",
            ms * percentile(ours.first_status, 50),
            ms * percentile(base.first_status, 50),
            "ms",
            f"≤ 1.5{X} baseline",
        ),
        Row(
            f"N={size}: create → first status, p99",
            ms * percentile(ours.first_status, 99),
            ms * percentile(base.first_status, 99),
            "ms",
        ),
        Row(
            f"N={size}: create → Resolved, p50",
            ms * percentile(ours.resolved, 50),
            ms * percentile(base.resolved, 50),
            "ms",
        ),
        Row(
            f"N={size}: create → Resolved, p99",
            ms * percentile(ours.resolved, 99),
            ms * percentile(base.resolved, 99),
            "ms",
        ),
        Row(f"N={size}: throughput", ours.throughput, base.throughput, "incidents/s", f"≥ 0.8{X} baseline"),
        Row(
            f"N={size}: status writes per incident",
            ours.status_writes,
            base.status_writes,
            "",
            f"≤ phases + finished steps = {PHASES + STEPS}",
        ),
        Row(
            f"N={size}: API requests per incident (incidents + events)",
            ours.api_per_incident(),
            base.api_per_incident(),
            "",
        ),
        Row(
            f"N={size}: operator peak RSS",
            ours.peak_rss_mb,
            base.peak_rss_mb,
            "MB",
            f"≤ {RSS_TARGET_MB:g} MB at 1,000 open" if size >= 1000 else "",
        ),
        Row(f"N={size}: operator CPU per incident", ours.cpu_ms_per_incident, base.cpu_ms_per_incident, "ms"),
        Row(
            f"N={size}: API server + etcd CPU per incident",
            ours.plane_cpu_ms_per_incident,
            base.plane_cpu_ms_per_incident,
            "ms",
        ),
    ]
    for row in rows:
        if row.target.startswith(f"≤ 1.5{X}"):
            row.met = row.ours <= 1.5 * (row.base or 0)
        elif row.target.startswith(f"≥ 0.8{X}"):
            row.met = row.ours >= 0.8 * (row.base or 0)
        elif row.target.startswith("≤ phases"):
            row.met = row.ours <= PHASES + STEPS
        elif row.target.startswith(f"≤ {RSS_TARGET_MB:g} MB"):
            row.met = row.ours <= RSS_TARGET_MB
    rows[0].met = ours.all_resolved and base.all_resolved
    rows[0].target = f"all {size}"
    return rows


def render(
    runs: dict[tuple[str, int], Run],
    matching_ms: float,
    command: str,
    seconds: float,
    matching: dict[str, float] | None = None,
) -> tuple[str, list[Row]]:
    rows: list[Row] = []
    for size in sorted({s for _, s in runs}):
        rows += rows_for(size, runs[("runbook-operator", size)], runs[("baseline", size)])
    rows.append(
        Row(
            f"select_policy: 10,000 incidents {X} 1,000 policies, per incident",
            matching_ms,
            None,
            "ms",
            f"≤ {MATCH_TARGET_MS:g} ms",
            matching_ms <= MATCH_TARGET_MS,
        )
    )
    if matching:
        rows.append(
            Row("select_policy: index of 1,000 policies, built once per policy change", matching["build"], None, "ms")
        )
        rows.append(
            Row("select_policy on a plain list (no index), 1,000 policies, per incident", matching["plain"], None, "ms")
        )
        rows.append(
            Row(
                "select_policy + every loser's reason (`plan`), 1,000 policies, per incident",
                matching["explained"],
                None,
                "ms",
            )
        )
    lines = [
        "| figure | runbook-operator | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ours / row.base:.2f}{X}" if row.base else "—"
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.figure} | {_fmt(row.ours, row.unit)} | {_fmt(row.base, row.unit)} | {ratio} | "
            f"{row.target or '—'} | {met} |"
        )
    requests = ["", "API requests per incident by verb (apiserver_request_total, bench's own requests removed):", ""]
    requests += ["| run | " + " | ".join(["request", "runbook-operator", "baseline"]) + " |", "|---|---|---|---|"]
    for size in sorted({s for _, s in runs}):
        ours, base = runs[("runbook-operator", size)].requests, runs[("baseline", size)].requests
        for key in sorted(set(ours) | set(base)):
            requests.append(f"| N={size} | {key} | {ours.get(key, 0):.2f} | {base.get(key, 0):.2f} |")
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    header = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"{int(meminfo) / 1024 / 1024:.0f} GiB, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}; the control plane, both operators, the DemoService and the bench share the machine. "
        f"Command: `{command}` ({seconds:.0f} s).",
        "",
    ]
    return "\n".join(header + lines + requests) + "\n", rows


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
def bin_dir() -> Path:
    build = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    return Path(build.stdout.strip().splitlines()[-1])


def run_all(
    sizes: list[int], workdir: Path, operators: tuple[str, ...] = OPERATORS, log: Any = print
) -> dict[tuple[str, int], Run]:
    plane = ControlPlane(workdir / "controlplane", bin_dir())
    started = time.monotonic()
    plane.up()
    log(f"control plane up in {time.monotonic() - started:.1f}s ({plane.root})")
    demo = DemoService(restart_seconds=0).start()
    runs: dict[tuple[str, int], Run] = {}
    try:
        cluster = Cluster(plane)
        cluster.install_crds()
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
    finally:
        demo.stop()
        plane.down()
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="incident counts (default 100 1000)")
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
        runs = run_all(args.sizes, workdir)
    matching_ms, matching = matching_benchmark(), matching_extras()
    print(f"select_policy: {matching_ms * 1000:.1f} µs per incident (10,000 incidents {X} 1,000 policies)")
    table, rows = render(runs, matching_ms, command, time.monotonic() - started, matching)
    write_report(args.out, table, rows)
    print(table)
    missed = [r.figure for r in rows if r.met is False]
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
