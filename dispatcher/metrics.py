"""Prometheus metrics of one dispatcher process (own registry: no global state).

Two kinds of series:
- per-replica counters and histograms (what this process did): sum them across replicas;
- cluster-wide state read from Redis (queue depths, oldest message, results by status). Every
  replica could read it, but then `sum()` would count it once per replica, so only the replica
  holding a short Redis lease (`queue_state.py`) exports those series; the others export none.
  `sum()` and `max()` both give the right answer, and a replica that dies loses the lease
  within three refresh intervals.

Every labelled series with a known label value starts at zero, so `increase()` and `rate()`
see the first event and alerts need no `or vector(0)`.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contracts.messages import Action, RejectReason
from contracts.results import ErrorKind, ResultStatus
from dispatcher.kube.classify import ADMISSION_CAUSES, JobEndReason
from dispatcher.queue import Depths

# Runs take seconds (a rejected message) to most of an hour (a reinstall); the last bucket is
# the default activeDeadlineSeconds.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 300)

# Label values known in advance (initialised at zero). Others still appear when they occur.
DEAD_LETTER_REASONS = tuple(reason.value for reason in RejectReason)
JOB_FAILURE_REASONS = tuple(reason.value for reason in JobEndReason
                            if reason is not JobEndReason.COMPLETED)
# ResultError.kind vocabulary (contracts/results.py ErrorKind); anything else (a marker
# written by an older runner) is counted as "other".
RESULT_KINDS = (*(kind.value for kind in ErrorKind), "other")
NO_KIND = "none"  # results without an error (succeeded)
# Message actions (contracts/messages.py Action); "other" for Jobs without a known label.
ACTIONS = (*(action.value for action in Action), "other")
RESULT_STATUSES = (*(status.value for status in ResultStatus), "other")
# The verbs KubeClient.call counts with their expected codes (0: no response); other codes
# (429, 5xx, ...) appear when they happen.
API_CODES = {"create": ("201", "409", "0"), "create_dry_run": ("201", "0"),
             "create_pod_dry_run": ("201", "403", "0"),
             "patch": ("200", "404", "0"), "create_event": ("201", "0")}


def _version() -> str:
    try:
        return metadata.version("infra-service")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


@dataclass
class ClusterState:
    """What the lease holder read from Redis; `None` depths = this replica does not export."""

    depths: Depths | None = None
    oldest_queued_seconds: float = 0.0
    results: dict[tuple[str, str], int] = field(default_factory=dict)


class _ClusterCollector(Collector):
    """Exports the Redis-derived series only while this replica holds the exporter lease."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []  # no fixed set: the series come and go with the lease

    def collect(self) -> Iterator[Metric]:
        depths = self.state.depths
        if depths is None:
            return
        for name, doc, value in (
            ("infra_queue_depth", "Messages waiting in the queue", depths.queue),
            ("infra_processing_depth", "Messages claimed by replicas, not yet Jobs",
             depths.processing),
            ("infra_waiting_depth", "Messages waiting for their server's Job to end",
             depths.waiting),
            ("infra_dead_letter_depth", "Entries in the dead-letter list", depths.dead_letter),
            ("infra_jobs_in_flight", "Servers with a Job in flight (all replicas)",
             depths.in_flight),
            ("infra_oldest_in_flight_seconds", "Age of the oldest message in flight",
             depths.oldest_in_flight_seconds),
            ("infra_queue_oldest_age_seconds",
             "Age of the oldest queued message (by its enqueued_at; 0 when empty or unknown)",
             self.state.oldest_queued_seconds),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        results = CounterMetricFamily(
            "infra_results", "Results published on the results list, by status and error "
            "kind, counted by the exporting replica since it took the lease",
            labels=["status", "kind"])
        for (status, kind), n in sorted(self.state.results.items()):
            results.add_metric([status, kind], n)
        yield results


class Metrics:
    def __init__(self) -> None:
        # *_created series double the exposition for nothing a dashboard here uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)  # process_*, python_info, python_gc_* like the default
        Info("infra_build", "Version of the running dispatcher", registry=r).info({
            "version": _version(), "component": "dispatcher",
            "python_version": platform.python_version()})
        self.received = Counter("infra_messages_received", "Messages taken from the queue",
                                registry=r)
        self.dispatched = Counter("infra_messages_dispatched",
                                  "Messages turned into a Job (including already existing ones)",
                                  registry=r)
        self.dead_lettered = Counter("infra_messages_dead_lettered",
                                     "Messages moved to the dead-letter list", ["reason"],
                                     registry=r)
        self.parked = Counter("infra_messages_waiting",
                              "Messages parked because their server had a Job in flight",
                              registry=r)
        self.jobs_created = Counter("infra_jobs_created", "Jobs created", registry=r)
        self.jobs_succeeded = Counter("infra_jobs_succeeded", "Jobs that completed", registry=r)
        self.jobs_failed = Counter("infra_jobs_failed", "Jobs that failed, by Kubernetes reason",
                                   ["reason"], registry=r)
        # A separate counter rather than more labels on infra_jobs_failed: its `reason` is
        # Kubernetes' vocabulary and alerts divide by its sum; kind x action x reason would
        # multiply the series for no question anyone asks.
        self.job_failures = Counter(
            "infra_job_failures", "Jobs that ended without success, by the result's error "
            "kind (runner's or dispatcher's) and the message action", ["kind", "action"],
            registry=r)
        self.job_duration = Histogram(
            "infra_job_duration_seconds", "From the Job's start to its end as the watch saw "
            "them, by action and result status", ["action", "status"],
            buckets=DURATION_BUCKETS, registry=r)
        self.dispatch_latency = Histogram(
            "infra_dispatch_latency_seconds", "From enqueue to Job created",
            buckets=LATENCY_BUCKETS, registry=r)
        self.api_responses = Counter("infra_kube_api_responses",
                                     "Kubernetes API responses by verb and status code",
                                     ["verb", "code"], registry=r)
        self.redis_reconnects = Counter("infra_redis_reconnects",
                                        "Redis connection losses recovered from", registry=r)
        self.loop_restarts = Counter("infra_loop_restarts",
                                     "Background loops that crashed and were restarted",
                                     ["loop"], registry=r)
        self.pod_admission_rejections = Counter(
            "infra_pod_admission_rejections", "Runner pods the API server refused at "
            "admission (the Job controller's FailedCreate Events), by cause",
            ["cause"], registry=r)
        self.ready = Gauge("infra_ready", "1 when Redis and the executor are reachable",
                           registry=r)
        self.queue_exporter = Gauge(
            "infra_queue_exporter", "1 on the replica holding the lease that exports the "
            "Redis-derived series (queue depths, results)", registry=r)
        self.cluster = ClusterState()
        r.register(_ClusterCollector(self.cluster))
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        for reason in JOB_FAILURE_REASONS:
            self.jobs_failed.labels(reason)
        # "other" (an unknown action or status) appears only when it happens: with the
        # histogram's 16 samples per series, zeroing it too would add 144 samples.
        for action in ACTIONS[:-1]:
            for kind in RESULT_KINDS:
                self.job_failures.labels(kind, action)
            for status in RESULT_STATUSES[:-1]:
                self.job_duration.labels(action, status)
        for cause in ADMISSION_CAUSES:
            self.pod_admission_rejections.labels(cause)
        for verb, codes in API_CODES.items():
            for code in codes:
                self.api_responses.labels(verb, code)

    def observe_depths(self, depths: Depths | None, oldest_queued_seconds: float = 0.0) -> None:
        """Redis-derived state to export (None: this replica does not hold the lease)."""
        self.cluster.depths = depths
        self.cluster.oldest_queued_seconds = oldest_queued_seconds
        self.queue_exporter.set(0 if depths is None else 1)

    def start_result_counts(self) -> None:
        """Zero counts for every known status and kind, when this replica takes the lease."""
        counts = {(ResultStatus.SUCCEEDED.value, NO_KIND): 0}
        for status in ResultStatus:
            if status is not ResultStatus.SUCCEEDED:
                counts.update({(status.value, kind): 0 for kind in RESULT_KINDS})
        self.cluster.results = counts

    def job_ended(self, action: str | None, status: str | None, kind: str | None,
                  duration_seconds: float | None) -> None:
        """One Job over (counted once, by the replica that released its server slot)."""
        action = action if action in ACTIONS else "other"
        status = status if status in RESULT_STATUSES else "other"
        if status != ResultStatus.SUCCEEDED.value:
            self.job_failures.labels(kind if kind in RESULT_KINDS else "other", action).inc()
        if duration_seconds is not None and duration_seconds >= 0:
            self.job_duration.labels(action, status).observe(duration_seconds)

    def count_result(self, status: str, kind: str | None) -> None:
        known = {s.value for s in ResultStatus}
        status = status if status in known else "other"
        kind = NO_KIND if not kind else (kind if kind in RESULT_KINDS else "other")
        key = (status, kind)
        self.cluster.results[key] = self.cluster.results.get(key, 0) + 1

