"""/metrics as Prometheus reads it: prometheus-client's exposition (format negotiation, gzip),
process and build-info series, zero-initialised labelled series, Redis-derived series
exported by exactly one replica at a time (a Redis lease), so sums across replicas hold,
result and dead-letter totals that are exact whatever the burst, replica or restart, the
oldest message's age without ``enqueued_at``, and the README's list of every series."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contracts.keys import Keys
from contracts.messages import (
    MAX_PAYLOAD_BYTES,
    Action,
    InvalidMessage,
    RejectReason,
    parse_message,
)
from contracts.reporting import publish_result
from contracts.results import Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.observability.health_server import close_metrics, serve_metrics
from dispatcher.observability.metrics import (
    ACTIONS,
    DEAD_LETTER_REASONS,
    JOB_FAILURE_REASONS,
    LATENCY_BUCKETS,
    RESULT_KINDS,
    RESULT_STATUSES,
    Metrics,
    dead_letter_counts,
    result_counts,
)
from dispatcher.observability.queue_state import QueueStateExporter, head_first_seen
from dispatcher.rejects import dead_letter_of
from dispatcher.store.queue import Limits, QueueStore
from dispatcher.supervision import Loop, Supervisor
from tests.support.dispatch import REPO
from tests.support.services import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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


def _samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exported(metrics: Metrics) -> Samples:
    return _samples(generate_latest(metrics.registry).decode())


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
    _, only = _get(url + "?name[]=infra_service_build_info")
    assert [f.name for f in text_string_to_metric_families(only.decode())] == [
        "infra_service_build_info"]


async def test_process_build_info_and_zero_series(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    metrics.max_in_flight.set(15)
    supervisor = Supervisor(metrics)
    supervisor.start(Loop.POP, lambda: asyncio.sleep(3600))
    try:
        samples = _samples(_get(url)[1].decode())
    finally:
        await supervisor.stop("pop")
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_start_time_seconds", "python_info"} <= names
    ((labels, value),) = [(dict(lb), v) for (n, lb), v in samples.items()
                          if n == "infra_service_build_info"]
    assert value == 1 and labels["component"] == "dispatcher" and labels["version"]
    assert not [n for n in names if n.startswith("infra_") and
                not n.startswith("infra_service_")]
    # A supervised loop's restarts exist at zero before its first crash, so increase()
    # sees that crash.
    assert samples[("infra_service_loop_restarts_total", (("loop", "pop"),))] == 0
    assert samples[("infra_service_max_in_flight", ())] == 15
    for reason in JOB_FAILURE_REASONS:
        assert samples[("infra_service_kube_jobs_failed_total", (("reason", reason),))] == 0
    for code in ("403", "422", "429", "500", "0"):
        assert samples[("infra_service_kube_api_responses_total",
                        (("code", code), ("verb", "create")))] == 0
    for action in ACTIONS[:-1]:
        for kind in RESULT_KINDS:
            assert samples[("infra_service_runs_failed_total",
                            (("action", action), ("kind", kind)))] == 0
        for status in RESULT_STATUSES[:-1]:
            key = (("action", action), ("status", status))
            assert samples[("infra_service_job_duration_seconds_count", key)] == 0
    assert ("infra_service_job_duration_seconds_count",
            (("action", "other"), ("status", "other"))) not in samples
    # Backpressure waits last hours: the latency histogram reaches them.
    assert max(LATENCY_BUCKETS) >= 8 * 3600
    # No replica has read Redis yet: no queue series rather than made-up zeros.
    assert "infra_service_queue_messages" not in names
    assert samples[("infra_service_queue_state_exporter", ())] == 0


def _result(rid: str, status: ResultStatus, kind: str | None,
            handle: str = "web-1") -> ResultEntry:
    return ResultEntry(
        request_id=rid, server_handle=handle, status=status, reported_by=Reporter.RUNNER,
        finished_at=datetime.now(UTC),
        error=ResultError(kind=kind, message="what failed") if kind else None)


def _exporters(redis: aioredis.Redis, keys: Keys, *names: str
               ) -> dict[str, tuple[Metrics, QueueStateExporter]]:
    out = {}
    for name in names:
        metrics = Metrics()
        out[name] = (metrics, QueueStateExporter(
            redis, keys, name, metrics, QueueStore(redis, keys, name), 1.0))
    return out


async def test_one_replica_exports_the_redis_state(redis_client: aioredis.Redis,
                                                  keys: Keys) -> None:
    replicas = _exporters(redis_client, keys, "r1", "r2")
    enqueued = (datetime.now(UTC) - timedelta(seconds=120)).isoformat()
    await redis_client.lpush(keys.queue, json.dumps({"server_handle": "a",
                                                     "enqueued_at": enqueued}),
                             json.dumps({"server_handle": "b"}))
    await redis_client.lpush(keys.dead_letter, "x", "y", "z")
    for _, exporter in replicas.values():
        await exporter.refresh()

    first, second = exported(replicas["r1"][0]), exported(replicas["r2"][0])
    assert first[("infra_service_queue_state_exporter", ())] == 1
    assert second[("infra_service_queue_state_exporter", ())] == 0
    # sum() over both replicas is the true depth: only the holder exports it.
    assert sum(s.get(("infra_service_queue_messages", ()), 0) for s in (first, second)) == 2
    assert ("infra_service_queue_messages", ()) not in second
    assert first[("infra_service_dead_letter_messages", ())] == 3
    assert 119 <= first[("infra_service_queue_oldest_age_seconds", ())] < 200
    # Every known status/kind and reason starts at zero on the holder.
    assert first[("infra_service_results_total", (("kind", "ssh_unreachable"),
                                                  ("status", "unreachable")))] == 0
    assert first[("infra_service_results_total", (("kind", "none"),
                                                  ("status", "planned")))] == 0
    assert ("infra_service_results_total", (("kind", "play_failed"),
                                            ("status", "planned"))) not in first
    # Succeeded and planned once (kind none), every other status with every kind.
    assert len([k for k in first if k[0] == "infra_service_results_total"]) == \
        2 + (len(ResultStatus) - 2) * len(RESULT_KINDS)
    for reason in DEAD_LETTER_REASONS:
        assert first[("infra_service_dead_letters_total", (("reason", reason),))] == 0

    # The holder stops (or dies and its lease expires): the other replica takes over.
    await replicas["r1"][1].release()
    assert await redis_client.get(keys.metrics_lease) is None
    await replicas["r2"][1].refresh()
    assert exported(replicas["r2"][0])[("infra_service_queue_messages", ())] == 2
    assert await redis_client.get(keys.metrics_lease) == b"r2"
    await replicas["r1"][1].refresh()
    assert ("infra_service_queue_messages", ()) not in exported(replicas["r1"][0])


async def test_results_are_counted_exactly_where_they_are_published(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """A burst bigger than any list scan, by both reporters, counted once each, whichever
    replica exports and after a restart; consumers popping the list change nothing."""
    burst = 700
    await asyncio.gather(*(publish_result(redis_client, keys, _result(
        f"ok-{i}", ResultStatus.SUCCEEDED, None, f"srv-{i}")) for i in range(burst)))
    for i in range(3):
        await publish_result(redis_client, keys, _result(
            f"un-{i}", ResultStatus.UNREACHABLE, "ssh_unreachable", f"far-{i}"))
    # The dispatcher's report for a request the runner already reported is a no-op, and is
    # not counted.
    assert not await publish_result(redis_client, keys, _result(
        "un-0", ResultStatus.FAILED, "job_failed", "far-0"))
    await redis_client.ltrim(keys.results, 0, 9)  # a consumer took most of the list
    replicas = _exporters(redis_client, keys, "r1", "r2")
    await replicas["r1"][1].refresh()
    samples = exported(replicas["r1"][0])
    assert samples[("infra_service_results_total",
                    (("kind", "none"), ("status", "succeeded")))] == burst
    assert samples[("infra_service_results_total",
                    (("kind", "ssh_unreachable"), ("status", "unreachable")))] == 3
    assert samples[("infra_service_results_total",
                    (("kind", "job_failed"), ("status", "failed")))] == 0
    # Another replica takes the lease (the first one stopped) or a replica restarts: the
    # same totals, never a recount from zero.
    await replicas["r1"][1].release()
    restarted = _exporters(redis_client, keys, "r2")["r2"]
    await restarted[1].refresh()
    again = exported(restarted[0])
    assert again[("infra_service_results_total",
                  (("kind", "none"), ("status", "succeeded")))] == burst


async def test_dead_letters_are_counted_by_reason_where_they_are_pushed(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    # Oversize: dead-lettered by the claim script, inside Redis.
    await redis_client.lpush(keys.queue, b"x" * (MAX_PAYLOAD_BYTES + 1),
                             json.dumps({"server_handle": "web-1", "request_id": "rq-1"}))
    batch = await store.claim_many(10, 10, MAX_PAYLOAD_BYTES, 64)
    assert batch.oversize == 1
    # Not JSON, with no result: dead-lettered by the dead-letter script.
    raw = b"{not json"
    await redis_client.lpush(store.processing, raw)
    with pytest.raises(InvalidMessage) as refused:
        parse_message(raw)
    dead = dead_letter_of(raw, refused.value, None, "r1", datetime.now(UTC))
    assert await store.dead_letter(raw, dead.entry, dead.result, dead.request_id,
                                   dead.server_handle, holder=False)
    # A second message reusing the request id of the claimed one: a duplicate.
    (claimed,) = batch.payloads
    invalid = InvalidMessage(RejectReason.DUPLICATE, "its request id holds a Job in flight")
    dup = dead_letter_of(claimed, invalid, None, "r1", datetime.now(UTC))
    await redis_client.hset(keys.inflight, "web-1", json.dumps({"rid": "rq-1"}))
    assert not await store.dead_letter(claimed, dup.entry, dup.result, "rq-1", "web-1",
                                       holder=False)
    metrics, exporter = _exporters(redis_client, keys, "r1")["r1"]
    await exporter.refresh()
    samples = exported(metrics)
    by_reason = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                 if name == "infra_service_dead_letters_total"}
    assert {r: n for r, n in by_reason.items() if n} == {"oversize": 1, "not_json": 1,
                                                         "duplicate": 1}
    assert samples[("infra_service_dead_letter_messages", ())] == 3


async def test_failed_servers_are_named_until_their_next_success(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    await publish_result(redis_client, keys, _result("a1", ResultStatus.UNREACHABLE,
                                                     "ssh_unreachable", "web-7"))
    await publish_result(redis_client, keys, _result("b1", ResultStatus.FAILED,
                                                     "play_failed", "web-8"))
    # An outcome older than a day is pruned (the ticket expires without news).
    await redis_client.hset(keys.server_outcomes, "web-9", json.dumps(
        {"status": "failed", "kind": "play_failed", "at": time.time() - 2 * 86400}))
    metrics, exporter = _exporters(redis_client, keys, "r1")["r1"]
    await exporter.refresh()
    failed = {dict(labels)["server_handle"]: dict(labels)
              for (name, labels), _ in exported(metrics).items()
              if name == "infra_service_server_last_failure_timestamp_seconds"}
    assert set(failed) == {"web-7", "web-8"}
    assert failed["web-7"]["status"] == "unreachable"
    assert failed["web-7"]["kind"] == "ssh_unreachable"
    assert not await redis_client.hexists(keys.server_outcomes, "web-9")
    await publish_result(redis_client, keys, _result("a2", ResultStatus.SUCCEEDED, None,
                                                     "web-7"))
    await exporter.refresh()
    failed_now = {dict(labels)["server_handle"] for (name, labels), _ in
                  exported(metrics).items()
                  if name == "infra_service_server_last_failure_timestamp_seconds"}
    assert failed_now == {"web-8"}


async def test_runs_in_flight_and_capped_messages_are_exported_by_action(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """Saturation per action on the dashboard: the slots counted by their run's action, the
    messages waiting for their action's cap, next to the configured cap."""
    store = QueueStore(redis_client, keys, "r1")
    await store.publish_limits(Limits(10, {Action.REINSTALL: 1}))
    for handle in ("w1", "w2", "w3"):
        await redis_client.lpush(keys.queue, json.dumps(
            {"server_handle": handle, "force_reinstall": True}))
    await redis_client.lpush(keys.queue, json.dumps({"server_handle": "w4"}))
    batch = await store.claim_many(10, cap=10, max_bytes=4096, prefix_bytes=100)
    assert (len(batch.payloads), batch.capped) == (2, 2)
    metrics, exporter = _exporters(redis_client, keys, "r1")["r1"]
    metrics.action_cap.labels("reinstall").set(1)
    await exporter.refresh()
    samples = exported(metrics)

    def by_action(name: str) -> dict[str, float]:
        return {dict(labels)["action"]: v for (n, labels), v in samples.items() if n == name}
    assert by_action("infra_service_jobs_in_flight_by_action") == {
        "setup": 1, "recovery": 0, "reinstall": 1}
    assert by_action("infra_service_capped_messages") == {
        "setup": 0, "recovery": 0, "reinstall": 2}
    assert by_action("infra_service_action_cap") == {"reinstall": 1}


async def test_oldest_message_age_without_enqueued_at(redis_client: aioredis.Redis,
                                                      keys: Keys) -> None:
    """The Scheduler may omit enqueued_at: the age counts from the first time the message
    was seen at the consuming end, recorded once in Redis (any replica, any restart)."""
    await redis_client.lpush(keys.queue, json.dumps({"server_handle": "web-1"}))
    seen = await head_first_seen(redis_client, keys, time.time() - 300)
    assert seen is not None and seen.enqueued_at is None
    # A later look keeps the first sighting.
    later = await head_first_seen(redis_client, keys, time.time())
    assert later is not None and later.first_seen == seen.first_seen
    metrics, exporter = _exporters(redis_client, keys, "r1")["r1"]
    await exporter.refresh()
    assert 299 <= exported(metrics)[("infra_service_queue_oldest_age_seconds", ())] < 400
    await redis_client.delete(keys.queue)
    await exporter.refresh()
    assert exported(metrics)[("infra_service_queue_oldest_age_seconds", ())] == 0


@pytest.mark.unit
def test_redis_totals_are_zero_filled_and_outside_values_are_other() -> None:
    """What the scripts counted in Redis, as exported: every known status x kind and reason
    at zero, an unknown status or kind (an older runner, a manual edit) summed as other."""
    results = result_counts({"succeeded|none": 5, "failed|play_failed": 2,
                             "failed|made_up": 1, "failed|other": 1, "odd|play_failed": 3})
    assert results[("succeeded", "none")] == 5
    assert results[("failed", "play_failed")] == 2
    assert results[("failed", "other")] == 2
    assert results[("other", "play_failed")] == 3
    assert results[("timed_out", "deadline_exceeded")] == 0
    dead = dead_letter_counts({"not_json": 4, "from_the_future": 1})
    assert dead["not_json"] == 4 and dead["other"] == 1
    assert all(dead[reason] == 0 for reason in DEAD_LETTER_REASONS if reason != "not_json")


@pytest.mark.unit
def test_job_ends_count_failures_by_kind_and_time_every_status() -> None:
    metrics = Metrics()
    metrics.job_ended("setup", "succeeded", None, 42.0)
    metrics.job_ended("reinstall", "failed", "play_failed", 1900.0)
    metrics.job_ended(None, "mystery", "made_up_kind", None)
    metrics.job_ended("recovery", "planned", None, 12.0)  # a plan ran to its end
    value = metrics.registry.get_sample_value
    assert value("infra_service_runs_failed_total",
                 {"kind": "play_failed", "action": "reinstall"}) == 1
    assert value("infra_service_runs_failed_total", {"kind": "other", "action": "other"}) == 1
    assert sum(value("infra_service_runs_failed_total", {"kind": k, "action": "setup"}) or 0
               for k in RESULT_KINDS) == 0  # a success is no failure
    assert sum(value("infra_service_runs_failed_total", {"kind": k, "action": "recovery"})
               or 0 for k in (*RESULT_KINDS, "other")) == 0  # nor is a plan
    assert value("infra_service_job_duration_seconds_count", {"action": "recovery",
                                                              "status": "planned"}) == 1
    assert value("infra_service_job_duration_seconds_count", {"action": "setup",
                                                              "status": "succeeded"}) == 1
    assert value("infra_service_job_duration_seconds_bucket", {
        "action": "reinstall", "status": "failed", "le": "1800.0"}) == 0
    assert value("infra_service_job_duration_seconds_bucket", {
        "action": "reinstall", "status": "failed", "le": "2700.0"}) == 1
    # Without a start time there is no duration, but the failure still counts.
    assert value("infra_service_job_duration_seconds_count", {"action": "other",
                                                              "status": "other"}) is None


# ---- the README's table of series ----

ROW = re.compile(r"^\| `(infra_service_\w+)` \| (counter|gauge|histogram|info) \|([^|]*)\|",
                 re.MULTILINE)


def readme_series() -> dict[str, tuple[str, set[str]]]:
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- metrics table -->", 2)[1]
    return {name: (kind, set(re.findall(r"`(\w+)`", labels)))
            for name, kind, labels in ROW.findall(table)}


async def test_readme_lists_every_series_with_its_type_and_labels(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """Scrape a live registry with every kind of series present (the lease held, a failed
    server, a loop running, an action capped) and compare it with the README's table."""
    await publish_result(redis_client, keys, _result("a1", ResultStatus.FAILED,
                                                     "play_failed", "web-7"))
    metrics, exporter = _exporters(redis_client, keys, "r1")["r1"]
    await exporter.refresh()
    metrics.loop_started("pop")
    metrics.action_cap.labels("reinstall").set(2)
    live: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if not family.name.startswith("infra_service_"):
            continue
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        live[family.name + ("_total" if family.type == "counter" else "")] = (family.type,
                                                                              labels)
    # The text format gives an Info as a gauge named *_info.
    listed = readme_series()
    listed = {n: ("gauge" if k == "info" else k, lb) for n, (k, lb) in listed.items()}
    assert listed == live
