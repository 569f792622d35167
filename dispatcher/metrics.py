"""Prometheus metrics of one dispatcher process (own registry: no global state)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from dispatcher.queue import Depths

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 300)


class Metrics:
    def __init__(self) -> None:
        # *_created series double the exposition for nothing a dashboard here uses.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self.queue_depth = Gauge("infra_queue_depth", "Messages waiting in the queue",
                                 registry=r)
        self.processing_depth = Gauge("infra_processing_depth",
                                      "Messages claimed by replicas, not yet Jobs", registry=r)
        self.waiting_depth = Gauge("infra_waiting_depth",
                                   "Messages waiting for their server's Job to end", registry=r)
        self.dead_letter_depth = Gauge("infra_dead_letter_depth", "Entries in the dead-letter list",
                                       registry=r)
        self.jobs_in_flight = Gauge("infra_jobs_in_flight",
                                    "Servers with a Job in flight (all replicas)", registry=r)
        self.oldest_in_flight = Gauge("infra_oldest_in_flight_seconds",
                                      "Age of the oldest message in flight", registry=r)
        self.ready = Gauge("infra_ready", "1 when Redis and the executor are reachable",
                           registry=r)

    def observe_depths(self, depths: Depths) -> None:
        self.queue_depth.set(depths.queue)
        self.processing_depth.set(depths.processing)
        self.waiting_depth.set(depths.waiting)
        self.dead_letter_depth.set(depths.dead_letter)
        self.jobs_in_flight.set(depths.in_flight)
        self.oldest_in_flight.set(depths.oldest_in_flight_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
