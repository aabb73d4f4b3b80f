"""A simulated ISH Chat: the admin APIs the runbook calls and the metrics it queries.

Three services listen on addresses of their own, on the runbook's ports: the instance
manager (:9090), the intelligent router (:9091) and the load balancer (:9092). Each serves
the runbook's admin endpoints and ``/metrics`` (job ``ish-chat-<service>``). A "down"
service closes its socket (Prometheus sees ``up == 0``), and listens again when its
Deployment is restarted. Traffic is simulated, not served: every scrape advances counters
by the time passed at the current rates (requests, errors, latency histogram, tokens, cost)
so PromQL's ``rate()`` and ``histogram_quantile()`` see what they would in production.

The exporters (cAdvisor's ``container_*`` per pod, node_exporter's filesystem, and
postgres/redis ``*_up`` from probes the lab passes in) listen on one more address.

With ``serve_services=False`` the three services do not listen here: each runs as a container
(:mod:`.workload`) that forwards its calls to this world through :meth:`IshChat.world_request`
(``/world/SERVICE/...`` on the lab's control address, :func:`world_route`).

Faults change the state (:meth:`IshChat.inject`); the runbook's remediations undo them
through the same endpoints the runbook calls, or through the cluster (the lab's kubelet
calls :meth:`IshChat.restarted` and :meth:`IshChat.set_pods`). Nothing here trusts a request
body beyond reading a few known keys.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVICES = {"instance-manager": 9090, "intelligent-router": 9091, "load-balancer": 9092}
PROVIDERS = {"openai": "gpt-4", "anthropic": "claude-3-sonnet", "zai": "glm-4"}
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)
MEMORY_LIMIT = 512 * 2**20
DISK_SIZE = 100 * 2**30
EXPORTER_PORTS = {"kubelet": 10255, "node": 9100, "postgres": 9187, "redis": 9121}
WORLD_PREFIX = "/world/"  # the world's side of the services' containers (world_route)
JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4"
CPU_CORES = {"instance-manager": 0.6, "intelligent-router": 0.5, "load-balancer": 0.2}  # healthy, per workload
DISK_USED = 0.55  # healthy share of the node's root filesystem
STRATEGY = "round_robin"  # the load balancer's strategy until someone changes it

# what every fault does to the simulation; the lab adds the ones on real servers
FAULTS = {
    "instance-manager-down": "the instance manager stops answering (crash)",
    "intelligent-router-down": "the intelligent router stops answering (crash)",
    "load-balancer-down": "the load balancer stops answering (crash)",
    "high-response-time": "openai requests take 3.5s (p95 > 2s) until routing is performance-based",
    "high-error-rate": "openai fails half its requests and its circuit breaker opens; a failover fixes it",
    "high-cpu-usage": "the instance manager needs 2.2 cores: >80% per pod until it runs 3 pods",
    "high-memory-usage": "the instance manager leaks to 95% of its memory limit; a restart does not help",
    "disk-space-running-low": "the node's root filesystem is 92% full",
    "unexpected-cost-spike": "openai requests cost 50x more",
}


@dataclass
class Provider:
    model: str
    rps: float = 5.0
    latency: float = 0.35
    error_ratio: float = 0.01
    healthy: bool = True
    circuit: int = 0  # 0 closed, 1 open, 2 half-open
    cost_per_request: float = 0.0004
    tokens_per_request: float = 600.0
    instances: int = 3
    rate_limit_rpm: float | None = None
    # counters
    ok: float = 0.0
    errors: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    duration_sum: float = 0.0
    cost: float = 0.0
    tokens: float = 0.0

    def reset(self) -> None:
        """Back to the defaults, keeping the counters (Prometheus must only ever see them grow)."""
        fresh = Provider(self.model)
        for each in fields(self):
            if each.name not in _COUNTERS:
                setattr(self, each.name, getattr(fresh, each.name))

    def advance(self, dt: float, failed_over: bool) -> None:
        rps = 0.0 if failed_over else self.rps
        if self.rate_limit_rpm is not None:
            rps = min(rps, self.rate_limit_rpm / 60)
        n = rps * dt
        bad = n * self.error_ratio
        self.ok += n - bad
        self.errors += bad
        for i, le in enumerate(BUCKETS):
            if self.latency <= le:
                self.buckets[i] += n
        self.duration_sum += n * self.latency
        self.cost += n * self.cost_per_request
        self.tokens += n * self.tokens_per_request


_COUNTERS = frozenset({"ok", "errors", "buckets", "duration_sum", "cost", "tokens"})


class IshChat:
    def __init__(
        self,
        addresses: dict[str, str],
        exporters_host: str,
        probes: dict[str, Callable[[], str]] | None = None,
        serve_services: bool = True,
    ) -> None:
        """``addresses``: service name → IP; ``probes``: exporter job → a function returning its metrics text;
        ``serve_services``: listen on the services' addresses (False: containers forward to world_request)."""
        self.addresses, self.exporters_host = addresses, exporters_host
        self.serve_services = serve_services
        self.probes = probes or {}
        self.lock = threading.RLock()
        self.providers = {name: Provider(model) for name, model in PROVIDERS.items()}
        self.failed_over: set[str] = set()
        self.down: set[str] = set()
        self.faults: set[str] = set()
        self.pods: dict[str, list[str]] = {}  # workload -> pod names (from the cluster)
        self.cpu_cores = dict(CPU_CORES)
        self.cpu_seconds: dict[str, float] = {}
        self.disk_used = DISK_USED
        self.strategy = STRATEGY
        self.calls: list[tuple[str, str, str, Any]] = []  # (service, method, path, body)
        self._last = time.monotonic()
        self._servers: dict[str, ThreadingHTTPServer] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> IshChat:
        for service in SERVICES if self.serve_services else ():
            self._listen(service)
        for job, port in EXPORTER_PORTS.items():
            self._serve(f"exporter-{job}", self.exporters_host, port, _exporter_handler(self, job))
        return self

    def stop(self) -> None:
        with self.lock:
            servers, self._servers = dict(self._servers), {}
        for server in servers.values():
            _close(server)

    def _listen(self, service: str) -> None:
        self._serve(service, self.addresses[service], SERVICES[service], _service_handler(self, service))

    def _serve(self, key: str, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        server = Server((host, port), handler)
        threading.Thread(target=server.serve_forever, args=(0.1,), name=f"ishchat-{key}", daemon=True).start()
        with self.lock:
            self._servers[key] = server

    # -- faults and their remedies -----------------------------------------------------------

    def inject(self, fault: str) -> None:
        if fault not in FAULTS:
            raise KeyError(fault)
        with self.lock:
            self._advance()
            self.faults.add(fault)
            openai = self.providers["openai"]
            if fault.endswith("-down"):
                service = fault.removesuffix("-down")
                self.down.add(service)
                server = self._servers.pop(service, None)
                if server is not None:
                    _close(server)
            elif fault == "high-response-time":
                openai.latency = 3.5
            elif fault == "high-error-rate":
                openai.healthy, openai.error_ratio, openai.circuit = False, 0.5, 1
            elif fault == "high-cpu-usage":
                self.cpu_cores["instance-manager"] = 2.2
            elif fault == "disk-space-running-low":
                self.disk_used = 0.92
            elif fault == "unexpected-cost-spike":
                openai.cost_per_request = 0.02

    def clear(self) -> None:
        """Back to a healthy system (between test scenarios)."""
        with self.lock:
            self._advance()
            for service in list(self.down):
                self.restarted(service)
            for provider in self.providers.values():
                provider.reset()
            self.failed_over.clear()
            self.faults.clear()
            self.cpu_cores, self.disk_used, self.strategy = dict(CPU_CORES), DISK_USED, STRATEGY

    def restarted(self, workload: str) -> None:
        """The lab's kubelet saw a rollout restart of ``workload``: a crashed service comes back."""
        with self.lock:
            if workload in self.down:
                self.down.discard(workload)
                self.faults.discard(f"{workload}-down")
                if self.serve_services:
                    self._listen(workload)

    def set_pods(self, pods: dict[str, list[str]]) -> None:
        with self.lock:
            self._advance()
            self.pods = {name: sorted(names) for name, names in pods.items()}

    # -- the simulation ---------------------------------------------------------------------

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._last = now - self._last, now
        for name, provider in self.providers.items():
            provider.advance(dt, name in self.failed_over)
        for workload, pods in self.pods.items():
            cores = self.cpu_cores.get(workload, 0.05) / max(1, len(pods))
            for pod in pods:
                self.cpu_seconds[pod] = self.cpu_seconds.get(pod, 0.0) + cores * dt

    def memory_ratio(self, workload: str) -> float:
        return 0.95 if workload == "instance-manager" and "high-memory-usage" in self.faults else 0.35

    def world_request(self, service: str, method: str, path: str, body: Any) -> tuple[int, Any, str]:
        """A service container's call (:mod:`.workload`): (status, payload, content type).

        ``GET /metrics`` is the service's metrics text, ``GET /state`` what its process should
        feel (``{"memory_ratio": r}``), anything else an admin call (:meth:`handle`).
        """
        if service not in SERVICES:
            return 404, {"error": f"unknown service {service!r}"}, JSON
        if method == "GET" and path == "/metrics":
            return 200, self.metrics(service), METRICS_TYPE
        if method == "GET" and path == "/state":
            return 200, {"memory_ratio": self.memory_ratio(service)}, JSON
        return (*self.handle(service, method, path, body), JSON)

    def handle(self, service: str, method: str, path: str, body: Any) -> tuple[int, Any]:
        """One admin API call: (status, JSON answer)."""
        with self.lock:
            self._advance()
            self.calls.append((service, method, path, body))
            data = body if isinstance(body, dict) else {}
            openai = self.providers["openai"]
            if method == "GET" and path == "/health":
                return 200, {"status": "healthy", "service": service}
            if service == "instance-manager":
                if method == "GET" and path == "/instances":
                    return 200, {p: {"healthy": v.instances if v.healthy else 0} for p, v in self.providers.items()}
            elif service == "intelligent-router":
                if method == "GET" and path == "/routing/config":
                    return 200, {"strategy": self.strategy, "providers": sorted(self.providers)}
                if method == "POST" and path == "/route":
                    provider = str(data.get("provider_type", "openai"))
                    return 200, {"provider_type": provider, "instance": f"{provider}-0"}
                if method == "GET" and path == "/ml/models/status":
                    return 200, {"models": "loaded"}
                if method == "POST" and path in ("/ml/models/reload", "/cache/clear", "/config/gc/optimize"):
                    return 200, {"ok": True}
                if method == "POST" and path == "/config/update":
                    return 200, {"updated": sorted(data)}
                if method == "GET" and path.startswith("/providers/") and path.endswith("/health"):
                    checked = self.providers.get(path.split("/")[2])
                    if checked is None:
                        return 404, {"error": "unknown provider"}
                    return (200, {"healthy": True}) if checked.healthy else (503, {"healthy": False})
                if method == "POST" and path == "/circuit/reset":
                    for each in self.providers.values():  # an unhealthy provider trips it again
                        each.circuit = 0 if each.healthy else 1
                    return 200, {p: v.circuit for p, v in self.providers.items()}
                if method == "POST" and path == "/instances/scale":
                    target = self.providers.get(str(data.get("provider_type")))
                    wanted = data.get("desired_instances")
                    if target is None or not isinstance(wanted, int) or not 0 <= wanted <= 50:
                        return 400, {"error": "provider_type and desired_instances (0..50) required"}
                    target.instances = wanted
                    return 200, {"provider_type": data["provider_type"], "instances": wanted}
                if method == "POST" and path == "/rate-limit/configure":
                    target = self.providers.get(str(data.get("provider_type")))
                    rpm = data.get("requests_per_minute")
                    if target is None or not isinstance(rpm, int | float) or rpm <= 0:
                        return 400, {"error": "provider_type and requests_per_minute required"}
                    target.rate_limit_rpm = float(rpm)
                    return 200, {"provider_type": data["provider_type"], "requests_per_minute": rpm}
            elif service == "load-balancer":
                if method == "GET" and path in ("/config", "/upstream/health"):
                    return 200, {"strategy": self.strategy, "upstreams": sorted(SERVICES)}
                if method == "GET" and path.startswith("/strategy/"):
                    return 200, {"strategy": self.strategy, "active": path.split("/")[2] == self.strategy}
                if method == "POST" and path == "/strategy/update":
                    self.strategy = str(data.get("strategy", self.strategy))
                    if self.strategy == "performance_based":  # routes around the slow instances
                        for each in self.providers.values():
                            each.latency = min(each.latency, 0.4)
                    return 200, {"strategy": self.strategy}
                if method == "POST" and path == "/failover/configure":
                    unhealthy = str(data.get("unhealthy_provider"))
                    targets = data.get("failover_to")
                    if unhealthy not in self.providers or not isinstance(targets, list) or not targets:
                        return 400, {"error": "unhealthy_provider and failover_to required"}
                    self.failed_over.add(unhealthy)
                    self.providers[unhealthy].circuit = 0
                    return 200, {"failed_over": unhealthy, "to": targets}
                if method == "POST" and path == "/routing/cost-optimized":
                    limit = data.get("max_cost_per_request")
                    if not isinstance(limit, int | float) or limit <= 0:
                        return 400, {"error": "max_cost_per_request required"}
                    openai.rps = openai.rps / 2  # cheaper providers take half of its traffic
                    return 200, {"max_cost_per_request": limit}
            return 404, {"error": f"no route {method} {path}"}

    # -- metrics ------------------------------------------------------------------------------

    def metrics(self, job: str) -> str:
        with self.lock:
            self._advance()
            lines: list[str] = []
            if job == "intelligent-router":
                lines += _family("ish_chat_requests_total", "counter", "requests by outcome")
                for name, p in self.providers.items():
                    for status, value in (("success", p.ok), ("error", p.errors)):
                        lines.append(
                            _sample(
                                "ish_chat_requests_total", value, provider_type=name, model_name=p.model, status=status
                            )
                        )
                lines += _family("ish_chat_request_duration_seconds", "histogram", "request latency")
                for name, p in self.providers.items():
                    for le, count in zip(BUCKETS, p.buckets, strict=True):
                        lines.append(
                            _sample("ish_chat_request_duration_seconds_bucket", count, provider_type=name, le=f"{le:g}")
                        )
                    total = p.ok + p.errors
                    lines.append(
                        _sample("ish_chat_request_duration_seconds_bucket", total, provider_type=name, le="+Inf")
                    )
                    lines.append(_sample("ish_chat_request_duration_seconds_sum", p.duration_sum, provider_type=name))
                    lines.append(_sample("ish_chat_request_duration_seconds_count", total, provider_type=name))
                lines += _family("ish_chat_circuit_breaker_state", "gauge", "0 closed, 1 open, 2 half-open")
                lines += [
                    _sample("ish_chat_circuit_breaker_state", p.circuit, provider_type=n)
                    for n, p in self.providers.items()
                ]
                lines += _family("ish_chat_cost_estimate_dollars", "counter", "estimated spend")
                lines += [
                    _sample("ish_chat_cost_estimate_dollars", p.cost, provider_type=n)
                    for n, p in self.providers.items()
                ]
                lines += _family("ish_chat_tokens_used_total", "counter", "tokens used")
                for name, p in self.providers.items():
                    lines.append(
                        _sample("ish_chat_tokens_used_total", p.tokens, provider_type=name, model_name=p.model)
                    )
            elif job == "instance-manager":
                lines += _family("ish_chat_instances_healthy", "gauge", "healthy instances per provider")
                for name, p in self.providers.items():
                    lines.append(
                        _sample("ish_chat_instances_healthy", p.instances if p.healthy else 0, provider_type=name)
                    )
            elif job == "load-balancer":
                lines += _family("ish_chat_instance_load", "gauge", "load per instance, 0..1")
                for name, p in self.providers.items():
                    load = 0.0 if name in self.failed_over else min(1.0, p.rps * p.latency / max(1, p.instances))
                    for i in range(p.instances):
                        lines.append(
                            _sample("ish_chat_instance_load", load, instance=f"{name}-{i}", provider_type=name)
                        )
            elif job == "kubelet":
                for metric, kind in (
                    ("container_cpu_usage_seconds_total", "counter"),
                    ("container_memory_working_set_bytes", "gauge"),
                    ("container_spec_memory_limit_bytes", "gauge"),
                ):
                    lines += _family(metric, kind, "cAdvisor")
                    for workload, pods in self.pods.items():
                        for pod in pods:
                            labels = {"namespace": "ishchat", "pod": pod, "container": workload}
                            value = {
                                "container_cpu_usage_seconds_total": self.cpu_seconds.get(pod, 0.0),
                                "container_memory_working_set_bytes": self.memory_ratio(workload) * MEMORY_LIMIT,
                                "container_spec_memory_limit_bytes": float(MEMORY_LIMIT),
                            }[metric]
                            lines.append(_sample(metric, value, **labels))
            elif job == "node":
                fs = {"mountpoint": "/", "fstype": "ext4", "device": "/dev/vda1"}
                lines += _family("node_filesystem_size_bytes", "gauge", "filesystem size")
                lines.append(_sample("node_filesystem_size_bytes", DISK_SIZE, **fs))
                lines += _family("node_filesystem_avail_bytes", "gauge", "filesystem space available")
                lines.append(_sample("node_filesystem_avail_bytes", DISK_SIZE * (1 - self.disk_used), **fs))
        if job in self.probes:  # outside the lock: a probe may take a while
            lines.append(self.probes[job]())
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _sample(name: str, value: float, **labels: str) -> str:
    inner = ",".join(f'{key}="{val}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {value:.6f}" if inner else f"{name} {value:.6f}"


def samples(name: str, rows: Iterable[tuple[dict[str, str], float]], kind: str = "gauge") -> str:
    """Exposition text for one metric family (the lab's postgres and redis probes use it)."""
    return "\n".join([*_family(name, kind, name), *(_sample(name, value, **labels) for labels, value in rows)])


def world_route(sim: IshChat, method: str, target: str, body: Any) -> tuple[int, Any, str]:
    """``target`` is ``/world/SERVICE/PATH`` (a request line's): :meth:`IshChat.world_request`."""
    service, slash, rest = target.removeprefix(WORLD_PREFIX).partition("/")
    return sim.world_request(service, method, slash + rest or "/", body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is not an error here."""


def _close(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


class JsonHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, code: int, payload: Any, content_type: str = JSON) -> None:
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self) -> Any:
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None


def _service_handler(sim: IshChat, service: str) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self.reply(200, sim.metrics(service), METRICS_TYPE)
            else:
                self.reply(*sim.handle(service, "GET", self.path, None))

        def do_POST(self) -> None:
            self.reply(*sim.handle(service, "POST", self.path, self.body()))

    return Handler


def _exporter_handler(sim: IshChat, job: str) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self.reply(200, sim.metrics(job), METRICS_TYPE)
            else:
                self.reply(404, {"error": "only /metrics here"})

    return Handler
