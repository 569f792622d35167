"""Prometheus metrics of one dispatcher process (own registry: no global state).

Every name starts with ``infra_service_``. Two kinds of series:
- per-replica counters, gauges and histograms (what this process did): sum them across
  replicas;
- cluster-wide state read from Redis (queue depths, ages, and the totals of results and dead
  letters, which the scripts that push them count in Redis, so they are exact across replicas
  and restarts). Every replica could read it, but then `sum()` would count it once per
  replica, so only the replica holding a short Redis lease (`queue_state.py`) exports those
  series; the others export none. `sum()` and `max()` both give the right answer, and a
  replica that dies loses the lease within three refresh intervals.

Every labelled series with a known label value starts at zero, so `increase()` and `rate()`
see the first event and alerts need no `or vector(0)`. The README's metrics table lists each
series; tests/dispatcher/observability/test_metrics.py keeps it in step with this module.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
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
from dispatcher.history.lost import LostWrite
from dispatcher.kube.classify import ADMISSION_CAUSES, JobEndReason
from dispatcher.store.queue import Depths

PREFIX = "infra_service"
# Runs take seconds (a rejected message) to most of an hour (a reinstall); the last bucket is
# the default activeDeadlineSeconds.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600)
# Enqueue to Job created: milliseconds when idle, hours when messages wait at the in-flight
# cap (backpressure) or behind their server's Job.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 300, 900, 1800, 3600, 7200, 14400, 28800)

# Label values known in advance (initialised at zero). Others still appear when they occur.
DEAD_LETTER_REASONS = tuple(reason.value for reason in RejectReason)
JOB_FAILURE_REASONS = tuple(reason.value for reason in JobEndReason
                            if reason is not JobEndReason.COMPLETED)
OTHER = "other"  # a label value outside the vocabulary (an older runner, a manual edit)
# ResultError.kind vocabulary (contracts/results.py ErrorKind).
RESULT_KINDS = (*(kind.value for kind in ErrorKind), OTHER)
NO_KIND = "none"  # results without an error (succeeded, planned)
# Statuses that carry no error kind and are no failed run: a plan that ran to its end says
# what a run would change, nothing about the server's health.
WITHOUT_ERROR = frozenset({ResultStatus.SUCCEEDED.value, ResultStatus.PLANNED.value})
# Message actions (contracts/messages.py Action); "other" for Jobs without a known label.
ACTIONS = (*(action.value for action in Action), OTHER)
RESULT_STATUSES = (*(status.value for status in ResultStatus), OTHER)
# The verbs KubeClient.call counts with the codes known in advance (0: no response): the
# successes, and for Job creates the refusals InfraServiceJobCreatesFailing names. Other
# codes appear when they happen.
API_CODES = {"create": ("201", "409", "403", "404", "422", "429", "500", "503", "0"),
             "create_dry_run": ("201", "0"), "create_pod_dry_run": ("201", "403", "0"),
             "patch": ("200", "404", "0"), "create_event": ("201", "0")}


def _version() -> str:
    try:
        return metadata.version("infra-service")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


@dataclass(frozen=True)
class ServerFailure:
    """A server whose latest result did not succeed, and when it was published."""

    handle: str
    status: str
    kind: str
    at: float


@dataclass
class ClusterState:
    """What the lease holder read from Redis; `None` depths = this replica does not export."""

    depths: Depths | None = None
    oldest_queued_seconds: float = 0.0
    results: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    server_failures: list[ServerFailure] = field(default_factory=list)


def result_counts(raw: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """The Redis hash ``<status>|<kind>`` -> count, with every known status and kind at zero
    and values outside the vocabularies summed as "other"."""
    counts = {(status, NO_KIND): 0 for status in sorted(WITHOUT_ERROR)}
    for failed in ResultStatus:
        if failed.value not in WITHOUT_ERROR:
            counts.update({(failed.value, kind): 0 for kind in RESULT_KINDS})
    for key, n in raw.items():
        status, _, kind = key.partition("|")
        status = status if status in RESULT_STATUSES else OTHER
        kind = kind if kind in RESULT_KINDS or kind == NO_KIND else OTHER
        counts[(status, kind)] = counts.get((status, kind), 0) + n
    return counts


def dead_letter_counts(raw: Mapping[str, int]) -> dict[str, int]:
    counts = dict.fromkeys(DEAD_LETTER_REASONS, 0)
    for reason, n in raw.items():
        key = reason if reason in counts else OTHER
        counts[key] = counts.get(key, 0) + n
    return counts


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
            ("queue_messages", "Messages waiting in the queue", depths.queue),
            ("processing_messages", "Messages claimed by replicas and not settled yet",
             depths.processing),
            ("parked_messages", "Messages on servers' waiting lists now, behind their "
             "server's Job in flight", depths.waiting),
            ("dead_letter_messages", "Entries in the dead-letter list now", depths.dead_letter),
            ("jobs_in_flight", "Servers with a Job in flight or being launched (all replicas)",
             depths.in_flight),
            ("oldest_in_flight_age_seconds", "Age of the oldest server slot in flight",
             depths.oldest_in_flight_seconds),
            ("oldest_claim_age_seconds", "Age of the oldest claim whose Job is not created "
             "yet (claimed but not launched)", depths.oldest_claim_seconds),
            ("queue_oldest_age_seconds", "Age of the oldest queued message: its enqueued_at, "
             "or when it was first seen at the consuming end; 0 when the queue is empty",
             self.state.oldest_queued_seconds),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        for name, doc, by_action in (
            ("jobs_in_flight_by_action", "Servers with a Job in flight or being launched, by "
             "the action of their run (all replicas)", depths.in_flight_by_action),
            ("capped_messages", "Messages waiting unclaimed because their action is at its "
             "cap (DISPATCHER_ACTION_CAPS)", depths.capped),
        ):
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["action"])
            for action in Action:
                family.add_metric([action.value], by_action.get(action, 0))
            yield family
        results = CounterMetricFamily(
            f"{PREFIX}_results", "Results published, by status and error kind (counted in "
            "Redis by the script that pushes each result)", labels=["status", "kind"])
        for (status, kind), n in sorted(self.state.results.items()):
            results.add_metric([status, kind], n)
        yield results
        dead = CounterMetricFamily(
            f"{PREFIX}_dead_letters", "Messages dead-lettered, by reason (counted in Redis by "
            "the script that pushes each entry)", labels=["reason"])
        for reason, n in sorted(self.state.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead
        failed = GaugeMetricFamily(
            f"{PREFIX}_server_last_failure_timestamp_seconds", "When the latest result of a "
            "server that did not succeed was published (servers whose next result succeeded, "
            "or older than a day, are left out)", labels=["server_handle", "status", "kind"])
        for failure in self.state.server_failures:
            failed.add_metric([failure.handle, failure.status, failure.kind], failure.at)
        yield failed


def _registry() -> CollectorRegistry:
    """A registry of this process's own, with what the default one carries (process_*,
    python_info, python_gc_*) and the build's version."""
    # *_created series double the exposition for nothing a dashboard here uses.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    Info(f"{PREFIX}_build", "Version of the running dispatcher", registry=registry).info({
        "version": _version(), "component": "dispatcher",
        "python_version": platform.python_version()})
    return registry


class Metrics:
    def __init__(self) -> None:
        self.registry = _registry()
        r = self.registry
        self.received = Counter(f"{PREFIX}_messages_received",
                                "Messages claimed from the queue by this replica", registry=r)
        self.dispatched = Counter(f"{PREFIX}_messages_dispatched",
                                  "Messages turned into a Job (including already existing ones)",
                                  registry=r)
        self.parked = Counter(f"{PREFIX}_messages_parked",
                              "Times a message was parked on its server's waiting list "
                              "because the server had a Job in flight", registry=r)
        self.jobs_created = Counter(f"{PREFIX}_jobs_created", "Runner Jobs created", registry=r)
        self.kube_jobs_completed = Counter(
            f"{PREFIX}_kube_jobs_completed", "Runner Jobs that ended with Kubernetes' Complete "
            "condition", registry=r)
        self.kube_jobs_failed = Counter(
            f"{PREFIX}_kube_jobs_failed", "Runner Jobs that ended failed, by the Kubernetes "
            "reason (Job condition, pod or container state)", ["reason"], registry=r)
        # A separate counter rather than more labels on kube_jobs_failed: its `reason` is
        # Kubernetes' vocabulary; kind x action x reason would multiply the series for no
        # question anyone asks.
        self.runs_failed = Counter(
            f"{PREFIX}_runs_failed", "Runs (one per message) that ended without success, by "
            "the result's error kind (runner's or dispatcher's) and the message action",
            ["kind", "action"], registry=r)
        self.job_duration = Histogram(
            f"{PREFIX}_job_duration_seconds", "From the Job's start to its end as the watch "
            "saw them, by action and result status", ["action", "status"],
            buckets=DURATION_BUCKETS, registry=r)
        self.dispatch_latency = Histogram(
            f"{PREFIX}_dispatch_latency_seconds", "From enqueue to Job created",
            buckets=LATENCY_BUCKETS, registry=r)
        self._declare_health(r)
        self.cluster = ClusterState()
        r.register(_ClusterCollector(self.cluster))
        self._start_at_zero()

    def _declare_health(self, r: CollectorRegistry) -> None:
        """The dispatcher's own health: API answers, Redis reconnects, loop restarts, pods
        refused, readiness, the cap and which replica exports the Redis-derived series."""
        self.api_responses = Counter(f"{PREFIX}_kube_api_responses",
                                     "Kubernetes API responses by verb and status code "
                                     "(0: no response)", ["verb", "code"], registry=r)
        self.redis_reconnects = Counter(f"{PREFIX}_redis_reconnects",
                                        "Redis connection losses recovered from", registry=r)
        self.loop_restarts = Counter(f"{PREFIX}_loop_restarts",
                                     "Background loops that crashed and were restarted",
                                     ["loop"], registry=r)
        self.pod_admission_rejections = Counter(
            f"{PREFIX}_pod_admission_rejections", "Runner pods the API server refused at "
            "admission (the Job controller's FailedCreate Events), by cause",
            ["cause"], registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when this replica is ready (/readyz)",
                           registry=r)
        self.max_in_flight = Gauge(
            f"{PREFIX}_max_in_flight", "The configured cap on Jobs in flight across replicas "
            "(DISPATCHER_MAX_IN_FLIGHT)", registry=r)
        self.history_writes_lost = Counter(
            f"{PREFIX}_history_writes_lost", "Writes of the run history in PostgreSQL that did "
            "not happen (dispatching went on): dropped while too many waited, or failed",
            ["reason"], registry=r)
        self.action_cap = Gauge(
            f"{PREFIX}_action_cap", "The configured cap on runs in flight of one action "
            "(DISPATCHER_ACTION_CAPS); absent for an action without a cap", ["action"],
            registry=r)
        self.queue_exporter = Gauge(
            f"{PREFIX}_queue_state_exporter", "1 on the replica holding the lease that "
            "exports the Redis-derived series (queue depths, results)", registry=r)

    def _start_at_zero(self) -> None:
        """Every label value of the vocabularies exists from the start at 0, so increase()
        sees the first event."""
        for reason in JOB_FAILURE_REASONS:
            self.kube_jobs_failed.labels(reason)
        for lost in LostWrite:
            self.history_writes_lost.labels(lost.value)
        # "other" (an unknown action or status) appears only when it happens: with the
        # histogram's 16 samples per series, zeroing it too would add 144 samples.
        for action in ACTIONS[:-1]:
            for kind in RESULT_KINDS:
                self.runs_failed.labels(kind, action)
            for status in RESULT_STATUSES[:-1]:
                self.job_duration.labels(action, status)
        for cause in ADMISSION_CAUSES:
            self.pod_admission_rejections.labels(cause)
        for verb, codes in API_CODES.items():
            for code in codes:
                self.api_responses.labels(verb, code)

    def loop_started(self, loop: str) -> None:
        """A supervised loop exists: its restarts count from zero."""
        self.loop_restarts.labels(loop)

    def observe_cluster(self, depths: Depths | None, oldest_queued_seconds: float = 0.0, *,
                        results: Mapping[str, int] | None = None,
                        dead_letters: Mapping[str, int] | None = None,
                        server_failures: list[ServerFailure] | None = None) -> None:
        """Redis-derived state to export (None: this replica does not hold the lease)."""
        self.cluster.depths = depths
        self.cluster.oldest_queued_seconds = oldest_queued_seconds
        self.cluster.results = result_counts(results or {})
        self.cluster.dead_letters = dead_letter_counts(dead_letters or {})
        self.cluster.server_failures = list(server_failures or [])
        self.queue_exporter.set(0 if depths is None else 1)

    def job_ended(self, action: str | None, status: str | None, kind: str | None,
                  duration_seconds: float | None) -> None:
        """One Job over (counted once, by the replica that released its server slot)."""
        action = action if action in ACTIONS else OTHER
        status = status if status in RESULT_STATUSES else OTHER
        if status not in WITHOUT_ERROR:
            self.runs_failed.labels(kind if kind in RESULT_KINDS else OTHER, action).inc()
        if duration_seconds is not None and duration_seconds >= 0:
            self.job_duration.labels(action, status).observe(duration_seconds)
