"""The dispatch loop end to end with the local executor (runner = subprocess)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts.connections import RedisSettings, create_redis
from contracts.keys import Keys
from tests.support.dispatch import (
    DispatcherProcess,
    fake_runs,
    message,
    metric_value,
    results,
    wait_until,
)
from tests.support.services import RedisServer, free_port, wait_for_port

FAKE_RUNNER = [sys.executable, "-m", "tests.support.fake_runner"]


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.jsonl"


@pytest.fixture
def start_dispatcher(redis_srv: RedisServer, redis_client: aioredis.Redis, tmp_path: Path,
                     run_log: Path) -> Iterator:
    started: list[DispatcherProcess] = []

    def start(plan: dict[str, str] | None = None, **env: str) -> DispatcherProcess:
        process = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            "DISPATCHER_EXECUTOR": "local",
            "DISPATCHER_LOCAL_COMMAND": json.dumps(FAKE_RUNNER),
            "FAKE_RUNNER_LOG": str(run_log), "FAKE_RUNNER_PLAN": json.dumps(plan or {}),
            "DISPATCHER_HEARTBEAT_SECONDS": "0.5", **env,
        }, tmp_path / f"dispatcher-{len(started)}.log").start()
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()


async def test_message_runs_once_and_runner_result_is_the_only_result(
        start_dispatcher, redis_client: aioredis.Redis, keys: Keys, run_log: Path) -> None:
    dispatcher = start_dispatcher()
    await redis_client.lpush(keys.queue, message("srv-1", "req-1"))
    got = await wait_until(lambda: results(redis_client, keys), what="result")
    await wait_until(lambda: _no_slots(redis_client, keys), what="slot release")
    assert [r["reported_by"] for r in got] == ["runner"]
    assert got[0]["status"] == "succeeded"
    assert [r["event"] for r in fake_runs(run_log)] == ["start", "end"]
    metrics = dispatcher.metrics()
    assert metric_value(metrics, "infra_service_jobs_created_total") == 1
    assert metric_value(metrics, "infra_service_kube_jobs_completed_total") == 1
    assert metric_value(metrics, "infra_service_dispatch_latency_seconds_count") == 1


async def _no_slots(redis: aioredis.Redis, keys: Keys) -> bool:
    return await redis.hlen(keys.inflight) == 0


async def test_runner_that_dies_silently_gets_a_dispatcher_failure_result(
        start_dispatcher, redis_client: aioredis.Redis, keys: Keys) -> None:
    start_dispatcher({"srv-x": "silent-fail", "srv-y": "silent-ok"})
    await redis_client.lpush(keys.queue, message("srv-x", "rx"))
    await redis_client.lpush(keys.queue, message("srv-y", "ry"))
    got = await wait_until(lambda: _n_results(redis_client, keys, 2), what="two results")
    by_handle = {r["server_handle"]: r for r in got}
    assert by_handle["srv-x"]["reported_by"] == "dispatcher"
    assert by_handle["srv-x"]["status"] == "failed"
    assert "code 7" in by_handle["srv-x"]["error"]["message"]
    assert "without publishing a result" in by_handle["srv-y"]["error"]["message"]


async def _n_results(redis: aioredis.Redis, keys: Keys, n: int) -> list[dict] | None:
    got = await results(redis, keys)
    return got if len(got) >= n else None


async def test_one_server_runs_one_job_at_a_time_in_arrival_order(
        start_dispatcher, redis_client: aioredis.Redis, keys: Keys, run_log: Path) -> None:
    start_dispatcher({"srv-1": "sleep:0.3"})
    for rid in ("first", "second", "third"):
        await redis_client.lpush(keys.queue, message("srv-1", rid))
    await wait_until(lambda: _n_results(redis_client, keys, 3), what="three results")
    events = fake_runs(run_log)
    assert [(e["event"], e["rid"]) for e in events] == [
        ("start", "first"), ("end", "first"), ("start", "second"), ("end", "second"),
        ("start", "third"), ("end", "third")]


async def test_in_flight_cap_holds_and_everything_finishes(
        start_dispatcher, redis_client: aioredis.Redis, keys: Keys, run_log: Path) -> None:
    plan = {f"srv-{i}": "sleep:1.5" for i in range(7)}
    start_dispatcher(plan, DISPATCHER_MAX_IN_FLIGHT="3")
    for i in range(7):
        await redis_client.lpush(keys.queue, message(f"srv-{i}", f"r{i}"))
    await wait_until(lambda: _n_results(redis_client, keys, 7), timeout=60, what="7 results")
    running, peak = 0, 0
    for event in sorted(fake_runs(run_log), key=lambda e: e["t"]):
        running += 1 if event["event"] == "start" else -1
        peak = max(peak, running)
    assert peak == 3  # reached, never exceeded


async def test_invalid_inputs_are_dead_lettered_and_service_keeps_going(
        start_dispatcher, redis_client: aioredis.Redis, keys: Keys) -> None:
    dispatcher = start_dispatcher()
    corpus = [b"not json", b"[]", b'{"server_handle": 5}', b"\xff", b'{"server_handle": "a b"}',
              message("srv-9", "rbad", is_recovery=True, force_reinstall=True).encode(),
              message("srv-7", "rplan", plan=True, force_reinstall=True).encode(),
              b'{"server_handle": "srv-8", "extra": true}', b"x" * 5000]
    for payload in corpus:
        await redis_client.lpush(keys.queue, payload)
    await redis_client.lpush(keys.queue, message("srv-ok", "rok"))
    await wait_until(lambda: _has_result(redis_client, keys, "rok"), what="valid message result")
    dead = [json.loads(d) for d in await redis_client.lrange(keys.dead_letter, 0, -1)]
    assert len(dead) == len(corpus)
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted(["not_json", "not_object", "wrong_type", "not_json", "bad_handle",
                              "conflicting_flags", "conflicting_flags", "unknown_field",
                              "oversize"])
    assert all(d["detail"] and "payload" in d for d in dead)
    rejected = {r["server_handle"]: r for r in await results(redis_client, keys)
                if r["status"] == "rejected"}
    assert set(rejected) == {"srv-9", "srv-8", "srv-7"}
    assert rejected["srv-9"]["request_id"] == "rbad"
    assert rejected["srv-9"]["error"]["kind"] == "invalid_message"
    assert rejected["srv-7"]["request_id"] == "rplan"
    assert "plan and force_reinstall" in rejected["srv-7"]["error"]["message"]
    assert await redis_client.llen(keys.processing("r1")) == 0
    # Counted by the claim script in Redis; /metrics shows it at the exporter's next refresh.
    await wait_until(lambda: asyncio.to_thread(lambda: metric_value(
        dispatcher.metrics(), "infra_service_dead_letters_total", '{reason="oversize"}') == 1),
        timeout=10, what="the oversize dead letter counted")


async def _has_result(redis: aioredis.Redis, keys: Keys, rid: str) -> bool:
    return any(r["request_id"] == rid for r in await results(redis, keys))


async def test_sigterm_stops_popping_and_loses_nothing(
        start_dispatcher, redis_client: aioredis.Redis, keys: Keys) -> None:
    dispatcher = start_dispatcher({f"s{i}": "sleep:0.2" for i in range(20)},
                                  DISPATCHER_MAX_IN_FLIGHT="2")
    for i in range(20):
        await redis_client.lpush(keys.queue, message(f"s{i}", f"r{i}"))
    await wait_until(lambda: _n_results(redis_client, keys, 1), what="first result")
    assert dispatcher.terminate(timeout=30) == 0
    # Everything is either reported, still queued or waiting: nothing is lost.
    done = {r["request_id"] for r in await results(redis_client, keys)}
    queued = {json.loads(m)["request_id"] for m in await redis_client.lrange(keys.queue, 0, -1)}
    assert await redis_client.llen(keys.processing("r1")) == 0
    assert done | queued | await _slot_rids(redis_client, keys) >= {f"r{i}" for i in range(20)}
    # A new replica finishes the rest.
    start_dispatcher({f"s{i}": "ok" for i in range(20)}, DISPATCHER_ORPHAN_GRACE_SECONDS="1",
                     DISPATCHER_RECONCILE_SECONDS="0.5")
    got = await wait_until(lambda: _n_results(redis_client, keys, 20), timeout=60,
                           what="all results")
    assert sorted(r["request_id"] for r in got) == sorted(f"r{i}" for i in range(20))


async def _slot_rids(redis: aioredis.Redis, keys: Keys) -> set[str]:
    return {json.loads(v)["rid"] for v in (await redis.hgetall(keys.inflight)).values()}


async def test_redis_restart_is_survived(tmp_path: Path, run_log: Path) -> None:
    """Readiness drops while Redis is gone; the dispatcher reconnects and carries on."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    wait_for_port(port)
    url = f"redis://127.0.0.1:{port}/0"
    dispatcher = DispatcherProcess({
        "REDIS_URL": url, "REDIS_PASSWORD": "", "DISPATCHER_EXECUTOR": "local",
        "DISPATCHER_LOCAL_COMMAND": json.dumps(FAKE_RUNNER), "FAKE_RUNNER_LOG": str(run_log),
    }, tmp_path / "dispatcher.log").start()
    try:
        dispatcher.wait_ready()
        server.terminate()
        server.wait(10)
        await wait_until(lambda: _ready_is(dispatcher, 503), timeout=30, what="readyz 503")
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for_port(port)
        redis = create_redis(RedisSettings(url=url))
        await redis.lpush(Keys().queue, message("srv-1", "after-restart"))
        await wait_until(lambda: _has_result(redis, Keys(), "after-restart"), timeout=30,
                         what="result after Redis restart")
        await wait_until(lambda: _ready_is(dispatcher, 200), timeout=30, what="readyz 200")
        assert metric_value(dispatcher.metrics(), "infra_service_redis_reconnects_total") >= 1
        await redis.aclose()
    finally:
        dispatcher.kill()
        server.terminate()
        server.wait(10)


async def _ready_is(dispatcher: DispatcherProcess, code: int) -> bool:
    status, _ = await asyncio.to_thread(dispatcher.http, dispatcher.health_port, "/readyz")
    return status == code


async def test_idle_dispatcher_blocks_instead_of_polling(start_dispatcher,
                                                        redis_client: aioredis.Redis) -> None:
    dispatcher = start_dispatcher()
    assert dispatcher.http(dispatcher.health_port, "/healthz")[0] == 200

    async def queue_commands() -> int:
        stats = await redis_client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0))
                   for c in ("blmove", "lmove", "rpop", "lpop", "rpoplpush", "evalsha"))

    before = await queue_commands()
    await asyncio.sleep(3)
    # One blocking pop waits up to 5 s; a polling loop would show dozens of calls here.
    assert await queue_commands() - before <= 3
