"""Prometheus metrics of the operator, derived from status changes and action runs.

Counters move on transitions between two statuses of one incident (so a restarted
operator that reloads a finished incident counts nothing twice); gauges are read
from the reconciler when scraped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler
from prometheus_client.registry import Collector

from runbook_operator.domain.budgets import ROUND, Budget
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Phase, Status, parse_timestamp

# incident handling takes seconds to hours
_DURATIONS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
_TERMINAL = (Phase.RESOLVED.value, Phase.ESCALATED.value)


class ArchiveMetrics:
    """The incident archive's health; registered only when an archive is configured."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("runbook_archive_up", "1 while the incident archive database takes writes, else 0",
                        registry=registry)  # fmt: skip
        self.failures = Counter(
            "runbook_archive_failures_total", "Failed attempts to reach or write the incident archive",
            registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "runbook_archive_dropped_total", "Finished incidents dropped from a full archive queue (oldest first)",
            registry=registry,
        )  # fmt: skip
        self.pending = Gauge("runbook_archive_pending", "Finished incidents waiting to be archived",
                             registry=registry)  # fmt: skip


class IntakeMetrics:
    """The Alertmanager intake's counters; registered only when the intake runs."""

    # not_ours: a resolved alert named an Incident the intake did not create for it (left alone)
    RESULTS = ("created", "duplicate", "resolved", "unknown_resolved", "not_ours", "failed")
    # too_many_connections, header_timeout: connections refused or closed before a request was read
    REASONS = ("unauthorized", "too_large", "too_many_alerts", "too_many_namespaces", "malformed",
               "body_timeout", "header_timeout", "too_many_connections")  # fmt: skip
    REDIRECTS = ("not_a_namespace", "not_watched", "not_opted_in")  # domain.alerts.place's reasons

    def __init__(self, registry: CollectorRegistry) -> None:
        self.alerts = Counter(
            "runbook_intake_alerts_total",
            "Alerts the Alertmanager intake handled, by result (failed: the API refused or was unreachable)",
            ["result"], registry=registry,
        )  # fmt: skip
        self.rejections = Counter(
            "runbook_intake_rejected_total", "Webhook requests the intake refused, by reason", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.redirects = Counter(
            "runbook_intake_redirected_total",
            "Alerts whose Incident went to --intake-namespace instead of the namespace they named, by reason",
            ["reason"], registry=registry,
        )  # fmt: skip
        for result in self.RESULTS:  # every series exists from the start, at 0
            self.alerts.labels(result)
        for reason in self.REASONS:
            self.rejections.labels(reason)
        for reason in self.REDIRECTS:
            self.redirects.labels(reason)

    def alert(self, result: str) -> None:
        self.alerts.labels(result).inc()

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def redirected(self, reason: str) -> None:
        self.redirects.labels(reason).inc()


class LeaderMetrics:
    """Leader election (adapters.lease); registered only when election runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge("runbook_leader", "1 while this replica holds the leader Lease (drives Incidents), else 0",
                            registry=registry)  # fmt: skip
        self.transitions = Counter(
            "runbook_leader_transitions_total", "Times this replica became leader (acquired the Lease)",
            registry=registry,
        )  # fmt: skip

    def started(self) -> None:
        self.leader.set(1)
        self.transitions.inc()

    def stopped(self) -> None:
        self.leader.set(0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._archive: ArchiveMetrics | None = None
        self._intake: IntakeMetrics | None = None
        self._leader: LeaderMetrics | None = None
        self.finished = Counter(
            "runbook_incidents_finished_total",
            "Incidents that reached Resolved or Escalated, by alert and reason",
            ["alert", "phase", "reason"],
            registry=registry,
        )
        self.time_to_acknowledge = Histogram(
            "runbook_incident_time_to_acknowledge_seconds", "From start to spec.acknowledgedBy (MTTA)",
            ["severity"], buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.time_to_resolve = Histogram(
            "runbook_incident_time_to_resolve_seconds", "From start to Resolved (MTTR)",
            ["severity"], buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.escalations = Counter(
            "runbook_escalations_total", "Escalation levels reached", ["level"], registry=registry
        )
        self.actions = Histogram(
            "runbook_action_duration_seconds", "Action runs (with retries) by action and outcome",
            ["action", "outcome"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=registry,
        )  # fmt: skip

        self.notifications = Counter(
            "runbook_notifications_total",
            "Notifications (notify.* steps: announcements, escalations, updates) by channel and result",
            ["channel", "result"], registry=registry,
        )  # fmt: skip

    def archive(self) -> ArchiveMetrics:
        """The archive's metrics, registered on first use (so no archive shows no archive series)."""
        if self._archive is None:
            self._archive = ArchiveMetrics(self.registry)
        return self._archive

    def intake(self) -> IntakeMetrics:
        """The intake's metrics, registered on first use."""
        if self._intake is None:
            self._intake = IntakeMetrics(self.registry)
        return self._intake

    def leader(self) -> LeaderMetrics:
        """Leader election's metrics, registered on first use."""
        if self._leader is None:
            self._leader = LeaderMetrics(self.registry)
        return self._leader

    def watch(
        self,
        phases: Callable[[], Iterable[str | None]],
        tasks: Callable[[], int] | None = None,
        silences: Callable[[], int] = lambda: 0,
    ) -> None:
        """Report incidents by phase (and approvals waiting, open incident tasks and Alertmanager
        silences not yet expired) at scrape time."""
        self.registry.register(_PhaseCollector(phases, tasks, silences))

    def budgets(self, listing: Callable[[], Iterable[Budget]], clock: Callable[[], datetime]) -> None:
        """Serve each RemediationBudget's use and limit, read when scraped."""
        self.registry.register(_BudgetCollector(listing, clock))

    def transition(self, incident: Incident, before: Status, after: Status) -> None:
        severity = after.severity or "Medium"
        if after.phase in _TERMINAL and after.phase != before.phase:
            condition = after.condition(after.phase)  # Resolved / Escalated conditions carry the reason
            reason = condition.reason if condition else "Unknown"
            self.finished.labels(incident.alert, after.phase, reason).inc()
            if after.phase == Phase.RESOLVED.value and after.startedAt and after.resolvedAt:
                self.time_to_resolve.labels(severity).observe(_seconds(after.startedAt, after.resolvedAt))
        if after.acknowledgedAt and not before.acknowledgedAt and after.startedAt:
            self.time_to_acknowledge.labels(severity).observe(_seconds(after.startedAt, after.acknowledgedAt))
        for level in after.escalation.fired[len(before.escalation.fired) :]:
            self.escalations.labels(level).inc()

    def action(self, name: str, ok: bool, seconds: float) -> None:
        self.actions.labels(name, "success" if ok else "failure").observe(seconds)

    def notification(self, channel: str, sent: bool) -> None:
        self.notifications.labels(channel, "sent" if sent else "failed").inc()


def _seconds(start: str, end: str) -> float:
    return max(0.0, (parse_timestamp(end) - parse_timestamp(start)).total_seconds())


class _PhaseCollector(Collector):
    def __init__(
        self, phases: Callable[[], Iterable[str | None]], tasks: Callable[[], int] | None, silences: Callable[[], int]
    ) -> None:
        self._phases, self._tasks, self._silences = phases, tasks, silences

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts: Mapping[str, int] = Tally(p or Phase.PENDING.value for p in self._phases())
        family = GaugeMetricFamily("runbook_incidents", "Incidents the operator knows, by phase", labels=["phase"])
        for phase in Phase:
            family.add_metric([phase.value], counts.get(phase.value, 0))
        yield family
        waiting = GaugeMetricFamily("runbook_approvals_waiting", "Incidents waiting for an approval")
        waiting.add_metric([], counts.get(Phase.AWAITING_APPROVAL.value, 0))
        yield waiting
        silenced = GaugeMetricFamily(
            "runbook_silences_active", "Alertmanager silences the incidents' steps made, not expired yet"
        )
        silenced.add_metric([], self._silences())
        yield silenced
        if self._tasks is not None:
            tasks = GaugeMetricFamily(
                "runbook_incident_tasks", "Incident tasks running (one per open incident, and per resolved one "
                "waiting for its TTL); a count that stays up after its incidents are deleted is a leak",
            )  # fmt: skip
            tasks.add_metric([], self._tasks())
            yield tasks


# -- serving /metrics --------------------------------------------------------------------------

SCRAPE_TIMEOUT = 10.0  # seconds a scrape connection may take to send its request and read the answer
MAX_SCRAPES = 16  # connections served at once; Prometheus keeps one per target


class _BudgetCollector(Collector):
    """runbook_budget_used and runbook_budget_limit, by budget and kind: remediation rounds and
    destructive steps in the window now (remediations, destructive_steps) and incidents holding a
    slot (concurrent_incidents)."""

    def __init__(self, listing: Callable[[], Iterable[Budget]], clock: Callable[[], datetime]) -> None:
        self._listing, self._clock = listing, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["namespace", "budget", "kind"]
        used = GaugeMetricFamily(
            "runbook_budget_used", "What a RemediationBudget has spent now, by kind", labels=labels
        )
        limit = GaugeMetricFamily("runbook_budget_limit", "A RemediationBudget's limit, by kind", labels=labels)
        now = self._clock()
        try:  # read from the scrape's thread while the event loop may change what it lists
            budgets = list(self._listing())
        except RuntimeError:  # changed during the read: this scrape shows none, the next one all
            budgets = []
        for budget in budgets:
            if budget.remediations is not None:
                used.add_metric([budget.namespace, budget.name, "remediations"], budget.used(now, ROUND))
                limit.add_metric([budget.namespace, budget.name, "remediations"], budget.remediations.limit)
            if budget.destructive is not None:
                used.add_metric([budget.namespace, budget.name, "destructive_steps"], budget.used(now))
                limit.add_metric([budget.namespace, budget.name, "destructive_steps"], budget.destructive.limit)
            if budget.concurrent is not None:
                used.add_metric([budget.namespace, budget.name, "concurrent_incidents"], len(budget.holds))
                limit.add_metric([budget.namespace, budget.name, "concurrent_incidents"], budget.concurrent)
        yield used
        yield limit


class _Scraper(_SilentHandler):
    """prometheus_client's handler with a deadline: a connection that sends half a request, drips
    it a byte at a time, or reads nothing, is shut down SCRAPE_TIMEOUT after it was accepted
    instead of holding a thread for ever."""

    timeout = SCRAPE_TIMEOUT  # StreamRequestHandler.setup() sets it on the socket (each read and write)

    def setup(self) -> None:
        self._deadline = threading.Timer(SCRAPE_TIMEOUT, self._expire)
        self._deadline.daemon = True
        self._deadline.start()
        super().setup()

    def _expire(self) -> None:
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)  # the blocked read or write returns at once

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()


class BoundedMetricsServer(ThreadingWSGIServer):
    """The metrics endpoint, as prometheus_client serves it, with at most ``limit`` connections
    at once: one more is closed at once, so a flood of half-open connections holds at most
    ``limit`` threads and files for at most SCRAPE_TIMEOUT each."""

    def __init__(self, address: tuple[str, int], limit: int = MAX_SCRAPES) -> None:
        self.address_family, host = _get_best_family(*address)  # type: ignore[no-untyped-call]  # as prometheus_client picks it
        self._slots = threading.BoundedSemaphore(limit)
        super().__init__((host, address[1]), _Scraper)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # a thread that ends in process_request_thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(host: str, port: int, registry: CollectorRegistry, limit: int = MAX_SCRAPES) -> BoundedMetricsServer:
    """Serve ``registry`` on http://host:port/metrics from a daemon thread; ``shutdown()`` stops it."""
    server = BoundedMetricsServer((host, port), limit)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
