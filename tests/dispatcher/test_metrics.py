"""/metrics as Prometheus reads it: prometheus-client's exposition (format negotiation, gzip),
process and build-info series, zero-initialised labelled series, and Redis-derived series
exported by exactly one replica at a time (a Redis lease), so sums across replicas hold."""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from contracts.keys import Keys
from dispatcher.health_server import close_metrics, serve_metrics
from dispatcher.metrics import (
    ACTIONS,
    DEAD_LETTER_REASONS,
    JOB_FAILURE_REASONS,
    RESULT_KINDS,
    RESULT_STATUSES,
    Metrics,
)
from dispatcher.queue import QueueStore
from dispatcher.queue_state import QueueStateExporter, lease_key
from tests.support.services import free_port


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics()
    port = free_port()
    server = serve_metrics("127.0.0.1", port, metrics.registry)
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        close_metrics(server)


def _get(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - a test URL
    with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
        return dict(r.headers), r.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_exposition_negotiates_format_and_compression(served: tuple[Metrics, str]) -> None:
    _metrics, url = served
    headers, _ = _get(url)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in headers
    headers, zipped = _get(url, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped).startswith(b"# HELP")
    headers, om = _get(url, Accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.rstrip().endswith(b"# EOF")
    # name[] filtering, as prometheus-client serves it.
    _, only = _get(url + "?name[]=infra_build_info")
    assert [f.name for f in text_string_to_metric_families(only.decode())] == ["infra_build_info"]


def test_process_build_info_and_zero_series(served: tuple[Metrics, str]) -> None:
    _metrics, url = served
    samples = _samples(_get(url)[1].decode())
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_start_time_seconds", "python_info"} <= names
    ((labels, value),) = [(dict(lb), v) for (n, lb), v in samples.items()
                          if n == "infra_build_info"]
    assert value == 1 and labels["component"] == "dispatcher" and labels["version"]
    for reason in DEAD_LETTER_REASONS:
        assert samples[("infra_messages_dead_lettered_total", (("reason", reason),))] == 0
    for reason in JOB_FAILURE_REASONS:
        assert samples[("infra_jobs_failed_total", (("reason", reason),))] == 0
    for action in ACTIONS[:-1]:
        for kind in RESULT_KINDS:
            assert samples[("infra_job_failures_total", (("action", action), ("kind", kind)))] == 0
        for status in RESULT_STATUSES[:-1]:
            key = (("action", action), ("status", status))
            assert samples[("infra_job_duration_seconds_count", key)] == 0
    assert ("infra_job_duration_seconds_count", (("action", "other"), ("status", "other"))) \
        not in samples
    # No replica has read Redis yet: no queue series rather than made-up zeros.
    assert "infra_queue_depth" not in names
    assert samples[("infra_queue_exporter", ())] == 0


async def test_one_replica_exports_the_redis_state(redis_client: aioredis.Redis,
                                                  keys: Keys) -> None:
    replicas = {}
    for name in ("r1", "r2"):
        metrics = Metrics()
        replicas[name] = (metrics, QueueStateExporter(
            redis_client, keys, name, metrics, QueueStore(redis_client, keys, name), 1.0))
    enqueued = (datetime.now(UTC) - timedelta(seconds=120)).isoformat()
    await redis_client.lpush(keys.queue, json.dumps({"server_handle": "a",
                                                     "enqueued_at": enqueued}),
                             json.dumps({"server_handle": "b"}))
    await redis_client.lpush(keys.dead_letter, "x", "y", "z")
    for _, exporter in replicas.values():
        await exporter.refresh()

    def exported(name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client import generate_latest
        return _samples(generate_latest(replicas[name][0].registry).decode())

    first, second = exported("r1"), exported("r2")
    assert first[("infra_queue_exporter", ())] == 1
    assert second[("infra_queue_exporter", ())] == 0
    # sum() over both replicas is the true depth: only the holder exports it.
    assert sum(s.get(("infra_queue_depth", ()), 0) for s in (first, second)) == 2
    assert ("infra_queue_depth", ()) not in second
    assert first[("infra_dead_letter_depth", ())] == 3
    assert 119 <= first[("infra_queue_oldest_age_seconds", ())] < 200
    # Every known status/kind starts at zero on the holder.
    assert first[("infra_results_total", (("kind", "ssh_unreachable"),
                                          ("status", "unreachable")))] == 0
    assert len([k for k in first if k[0] == "infra_results_total"]) == 1 + 4 * len(RESULT_KINDS)

    # Results published after the holder's first read are counted once, by status and kind.
    for status, kind in (("unreachable", "ssh_unreachable"), ("unreachable", "ssh_unreachable"),
                         ("failed", "play_failed"), ("succeeded", None), ("failed", "weird")):
        entry = {"status": status, "error": {"kind": kind} if kind else None}
        await redis_client.lpush(keys.results, json.dumps(entry))
    for _, exporter in replicas.values():
        await exporter.refresh()
        await exporter.refresh()  # a second read adds nothing
    first = exported("r1")
    assert first[("infra_results_total", (("kind", "ssh_unreachable"),
                                          ("status", "unreachable")))] == 2
    assert first[("infra_results_total", (("kind", "play_failed"), ("status", "failed")))] == 1
    assert first[("infra_results_total", (("kind", "none"), ("status", "succeeded")))] == 1
    assert first[("infra_results_total", (("kind", "other"), ("status", "failed")))] == 1

    # The holder stops (or dies and its lease expires): the other replica takes over.
    await replicas["r1"][1].release()
    assert await redis_client.get(lease_key(keys)) is None
    await replicas["r2"][1].refresh()
    assert exported("r2")[("infra_queue_depth", ())] == 2
    assert await redis_client.get(lease_key(keys)) == b"r2"
    await replicas["r1"][1].refresh()
    assert ("infra_queue_depth", ()) not in exported("r1")


def test_job_ends_count_failures_by_kind_and_time_every_status() -> None:
    metrics = Metrics()
    metrics.job_ended("setup", "succeeded", None, 42.0)
    metrics.job_ended("reinstall", "failed", "play_failed", 1900.0)
    metrics.job_ended(None, "mystery", "made_up_kind", None)
    value = metrics.registry.get_sample_value
    assert value("infra_job_failures_total", {"kind": "play_failed", "action": "reinstall"}) == 1
    assert value("infra_job_failures_total", {"kind": "other", "action": "other"}) == 1
    assert sum(value("infra_job_failures_total", {"kind": k, "action": "setup"}) or 0
               for k in RESULT_KINDS) == 0  # a success is no failure
    assert value("infra_job_duration_seconds_count", {"action": "setup",
                                                      "status": "succeeded"}) == 1
    assert value("infra_job_duration_seconds_bucket", {"action": "reinstall",
                                                       "status": "failed", "le": "1800.0"}) == 0
    assert value("infra_job_duration_seconds_bucket", {"action": "reinstall",
                                                       "status": "failed", "le": "2700.0"}) == 1
    # Without a start time there is no duration, but the failure still counts.
    assert value("infra_job_duration_seconds_count", {"action": "other",
                                                      "status": "other"}) is None
