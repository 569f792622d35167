"""Hostile payloads, an unlucky Redis and reused request ids must not stop dispatching."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contracts.connections import RedisSettings, create_redis
from contracts.keys import Keys
from dispatcher.naming import LABEL_REQUEST
from tests.support.dispatch import (
    DispatcherProcess,
    fake_runs,
    message,
    metric_value,
    results,
    wait_until,
)
from tests.support.kube_env import KubeEnv as Kube
from tests.support.services import RedisServer, free_port, wait_for_port

FAKE_RUNNER = [sys.executable, "-m", "tests.support.fake_runner"]


@pytest.fixture
def local_dispatcher(redis_srv: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
                     ) -> Iterator:
    started: list[DispatcherProcess] = []

    def start(plan: dict[str, str] | None = None, **env: str) -> DispatcherProcess:
        process = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            "DISPATCHER_EXECUTOR": "local", "DISPATCHER_LOCAL_COMMAND": json.dumps(FAKE_RUNNER),
            "FAKE_RUNNER_LOG": str(tmp_path / "runs.jsonl"),
            "FAKE_RUNNER_PLAN": json.dumps(plan or {}), "DISPATCHER_HEARTBEAT_SECONDS": "0.5",
            **env}, tmp_path / f"dispatcher-{len(started)}.log").start()
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()


async def _result(redis: aioredis.Redis, keys: Keys, rid: str) -> dict | None:
    return next((r for r in await results(redis, keys) if r["request_id"] == rid), None)


async def test_poison_payloads_are_dead_lettered_and_the_queue_goes_on(
        local_dispatcher, redis_client: aioredis.Redis, keys: Keys) -> None:
    """Deeply nested JSON used to kill the pop loop (RecursionError) and, after every
    restart, kill it again; UTF-16/32 payloads used to be accepted."""
    dispatcher = local_dispatcher()
    valid = '{"server_handle": "srv-2", "request_id": "r-utf16"}'
    poison = [b"[" * 2000 + b"]" * 2000,
              b'{"server_handle": "srv-4", "x": ' + b"[" * 1900 + b"]" * 1900 + b"}",
              valid.encode("utf-16"), valid.encode("utf-32"), b"\xef\xbb\xbf" + valid.encode(),
              b'{"server_handle": "srv-3", "x": NaN}']
    for payload in poison:
        await redis_client.lpush(keys.queue, payload)
    await redis_client.lpush(keys.queue, message("srv-ok", "after-poison"))
    await wait_until(lambda: _result(redis_client, keys, "after-poison"), timeout=60,
                     what="the valid message behind the poison")
    dead = [json.loads(d) for d in await redis_client.lrange(keys.dead_letter, 0, -1)]
    assert sorted(d["reason"] for d in dead) == sorted(
        ["too_deep", "too_deep", "not_json", "not_json", "not_json", "not_json"])
    assert all(d["payload_bytes"] and not d["payload_truncated"] for d in dead)
    assert await _result(redis_client, keys, "r-utf16") is None
    # Counted in Redis with each entry; /metrics shows it at the exporter's next refresh.
    await wait_until(lambda: asyncio.to_thread(lambda: metric_value(
        dispatcher.metrics(), "infra_service_dead_letters_total", '{reason="too_deep"}') == 2),
        timeout=10, what="dead letters counted by reason")
    restarts = [line for line in dispatcher.metrics().splitlines()
                if line.startswith("infra_service_loop_restarts_total{")]
    assert restarts and all(line.endswith(" 0.0") for line in restarts)  # nothing crashed
    assert dispatcher.http(dispatcher.health_port, "/healthz")[0] == 200


async def test_a_malformed_message_reusing_a_running_request_id_changes_nothing(
        local_dispatcher, redis_client: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    """It used to free the busy server (a second Job started while the first ran) and mark
    the request reported (the real result was lost)."""
    local_dispatcher({"srv-1": "sleep:4"})
    await redis_client.lpush(keys.queue, message("srv-1", "req-1"))
    await wait_until(lambda: _started(tmp_path, "req-1"), what="the first Job running")
    await redis_client.lpush(keys.queue, b'{"server_handle": "srv-1", "request_id": "req-1", '
                                          b'"is_recovry": true}')
    await redis_client.lpush(keys.queue, message("srv-1", "req-1"))  # a valid second push
    await redis_client.lpush(keys.queue, message("srv-1", "req-2"))
    dead = await wait_until(lambda: _dead(redis_client, keys, 2), what="two dead letters")
    assert [d["reason"] for d in dead] == ["duplicate", "duplicate"]
    # While req-1 runs: its slot is untouched, no result, no second run.
    slot = json.loads(await redis_client.hget(keys.inflight, "srv-1"))
    assert slot["rid"] == "req-1"
    assert not await redis_client.exists(keys.reported("req-1"))
    starts = [e["rid"] for e in fake_runs(tmp_path / "runs.jsonl") if e["event"] == "start"]
    assert starts == ["req-1"]
    # Then the real result arrives and req-2 runs after req-1 ended, not before.
    got = await wait_until(lambda: _result(redis_client, keys, "req-2"), timeout=60,
                           what="req-2 result")
    assert got["reported_by"] == "runner"
    first = await _result(redis_client, keys, "req-1")
    assert first is not None and (first["status"], first["reported_by"]) == \
        ("succeeded", "runner")
    events = [(e["event"], e["rid"]) for e in fake_runs(tmp_path / "runs.jsonl")]
    assert events == [("start", "req-1"), ("end", "req-1"), ("start", "req-2"), ("end", "req-2")]


async def _started(tmp_path: Path, rid: str) -> bool:
    return any(e["event"] == "start" and e["rid"] == rid
               for e in fake_runs(tmp_path / "runs.jsonl"))


async def _dead(redis: aioredis.Redis, keys: Keys, n: int) -> list[dict] | None:
    dead = [json.loads(d) for d in await redis.lrange(keys.dead_letter, 0, -1)]
    return dead if len(dead) >= n else None


class RestartableRedis:
    """A Redis that persists every write (AOF, fsync always) and can be SIGKILLed and
    started again on the same port: what a pod restart of a persistent Redis looks like."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                     "--dir", str(workdir), "--loglevel", "warning"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def k8s(kube_env: Kube) -> Kube:
    """The real API server and Job controller (the runner pods are bound to the status node,
    where nothing runs them)."""
    return kube_env


async def _push(redis: aioredis.Redis, keys: Keys, payload: str) -> None:
    """Push until Redis takes it (a push whose reply was lost may land twice: the same
    request id, which must still give one Job)."""
    while True:
        try:
            await redis.lpush(keys.queue, payload)
            return
        except (RedisError, OSError):
            await asyncio.sleep(0.05)


async def test_redis_killed_at_random_instants_every_message_gets_one_job(
        restartable_redis: RestartableRedis, k8s: Kube, tmp_path: Path) -> None:
    rng = random.Random(1234)
    keys = Keys()
    dispatcher = DispatcherProcess({
        "REDIS_URL": restartable_redis.url, "REDIS_PASSWORD": "",
        **k8s.dispatcher_env(),
        "DISPATCHER_HEARTBEAT_SECONDS": "0.5", "DISPATCHER_RECONCILE_SECONDS": "1",
        "DISPATCHER_MAX_IN_FLIGHT": "1000",
    }, tmp_path / "dispatcher.log").start()
    redis = create_redis(RedisSettings(url=restartable_redis.url))
    rids: list[str] = []
    try:
        dispatcher.wait_ready(60)
        for round_ in range(20):
            batch = [f"k{round_}-{i}" for i in range(rng.randint(3, 8))]
            rids += batch
            pushes = asyncio.gather(*(_push(redis, keys, message(f"srv-{rid}", rid))
                                      for rid in batch))
            # Kill before, during or after the pushes (and the claims they trigger).
            await asyncio.sleep(rng.uniform(0, 0.15))
            restartable_redis.kill()
            await asyncio.sleep(rng.uniform(0, 0.5))
            restartable_redis.start()
            await pushes
        await wait_until(lambda: _jobs_for(k8s, rids), timeout=180, interval=0.5,
                         what="one Job per message")
        await asyncio.sleep(3)  # a late duplicate would show up now
        per_request = Counter(j["metadata"]["labels"][LABEL_REQUEST] for j in k8s.jobs())
        assert set(per_request) == set(rids)
        assert max(per_request.values()) == 1
        assert dispatcher.proc is not None and dispatcher.proc.poll() is None
        assert dispatcher.http(dispatcher.health_port, "/healthz")[0] == 200
        await wait_until(lambda: _ready(dispatcher), timeout=30, what="ready again")
        assert await redis.llen(keys.queue) == 0
    finally:
        dispatcher.kill()
        with contextlib.suppress(RedisError, OSError):
            await redis.aclose()


async def _jobs_for(k8s: Kube, rids: list[str]) -> bool:
    jobs = await asyncio.to_thread(k8s.jobs)
    return {j["metadata"]["labels"][LABEL_REQUEST] for j in jobs} >= set(rids)


async def _ready(dispatcher: DispatcherProcess) -> bool:
    status, _ = await asyncio.to_thread(dispatcher.http, dispatcher.health_port, "/readyz")
    return status == 200
