"""The CLI as SREs use it: enqueue, status, results, dead letters, settings, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.support.dispatch import REPO
from tests.support.services import RedisServer


def cli(redis_srv: RedisServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_srv.url,
                "REDIS_PASSWORD": redis_srv.password or "", **env}
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], env=full_env,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_enqueue_then_status(redis_srv: RedisServer, redis_client: aioredis.Redis,
                                   keys: Keys) -> None:
    done = cli(redis_srv, "enqueue", "web-7", "--recovery")
    assert done.returncode == 0, done.stderr
    pushed = json.loads(await redis_client.lindex(keys.queue, 0))
    assert pushed["server_handle"] == "web-7"
    assert pushed["is_recovery"] is True
    assert pushed["request_id"] == json.loads(done.stdout)["enqueued"]["request_id"]
    # A claim two minutes old whose Job was never created (InfraServiceClaimedNotLaunched).
    await redis_client.hset(keys.inflight, "web-8", json.dumps(
        {"state": "acquired", "rid": "r-8", "since": time.time() - 120,
         "action": "reinstall"}))
    # Two reinstalls waiting for their action's cap.
    await redis_client.lpush(keys.capped("reinstall"), json.dumps(
        {"server_handle": "web-9", "force_reinstall": True}), json.dumps(
        {"server_handle": "web-10", "force_reinstall": True}))
    status = json.loads(cli(redis_srv, "status").stdout)
    assert status["queue"] == 1
    assert status["dead_letter"] == 0
    assert 119 <= status["oldest_claim_seconds"] < 180
    assert status["servers_in_flight"]["web-8"]["state"] == "acquired"
    assert status["servers_in_flight"]["web-8"]["action"] == "reinstall"
    assert status["jobs_in_flight_by_action"] == {"setup": 0, "recovery": 0, "reinstall": 1}
    assert status["waiting_for_action_cap"] == {"setup": 0, "recovery": 0, "reinstall": 2}


async def test_enqueue_a_plan(redis_srv: RedisServer, redis_client: aioredis.Redis,
                             keys: Keys) -> None:
    done = cli(redis_srv, "enqueue", "web-7", "--recovery", "--plan")
    assert done.returncode == 0, done.stderr
    pushed = json.loads(await redis_client.lindex(keys.queue, 0))
    assert (pushed["plan"], pushed["is_recovery"]) == (True, True)
    refused = cli(redis_srv, "enqueue", "web-7", "--force-reinstall", "--plan")
    assert refused.returncode == 2
    assert "plan and force_reinstall are mutually exclusive" in refused.stderr
    assert await redis_client.llen(keys.queue) == 1


def test_enqueue_rejects_a_bad_handle_without_touching_redis(redis_srv: RedisServer) -> None:
    done = cli(redis_srv, "enqueue", "bad handle")
    assert done.returncode == 2
    assert "server_handle" in done.stderr


async def test_dead_letter_show_and_requeue(redis_srv: RedisServer, redis_client: aioredis.Redis,
                                            keys: Keys) -> None:
    oversize = {"reason": "oversize", "detail": "big", "payload": '{"server_handle": "s',
                "payload_bytes": 2 << 20, "payload_truncated": True}
    entry = {"reason": "job_rejected", "detail": "422", "payload": '{"server_handle": "s1"}'}
    await redis_client.lpush(keys.dead_letter, json.dumps(oversize))
    await redis_client.lpush(keys.dead_letter, json.dumps(entry))
    shown = cli(redis_srv, "dead-letter")
    assert json.loads(shown.stdout.splitlines()[0])["reason"] == "job_rejected"
    moved = cli(redis_srv, "dead-letter", "--requeue", "-n", "5")
    # A truncated prefix is not a message: it stays where it is.
    assert json.loads(moved.stdout) == {"requeued": 1, "kept_truncated": 1}
    assert await redis_client.lrange(keys.queue, 0, -1) == [entry["payload"].encode()]
    assert [json.loads(d)["reason"] for d in await redis_client.lrange(keys.dead_letter, 0, -1)
            ] == ["oversize"]


def test_invalid_setting_names_the_variable_not_the_value(redis_srv: RedisServer) -> None:
    done = cli(redis_srv, "run", REDIS_URL="redis://user:hunter2-secret@127.0.0.1:1/0")
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr
    assert "hunter2-secret" not in done.stderr
    done = cli(redis_srv, "run", DISPATCHER_MAX_IN_FLIGHT="zero")
    assert done.returncode == 2
    assert "DISPATCHER_MAX_IN_FLIGHT" in done.stderr


@pytest.mark.parametrize(("value", "said"), [
    ("reinstall=2", "invalid setting DISPATCHER_ACTION_CAPS: not valid JSON"),
    ('{"reinstall": 50}', "reinstall is capped at 50; a cap must be between 1 and "
                          "DISPATCHER_MAX_IN_FLIGHT (10)"),
])
def test_an_action_cap_that_cannot_hold_stops_the_dispatcher_in_one_line(
        redis_srv: RedisServer, value: str, said: str) -> None:
    done = cli(redis_srv, "run", DISPATCHER_ACTION_CAPS=value)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_settings_lists_every_variable(redis_srv: RedisServer) -> None:
    rows = json.loads(cli(redis_srv, "settings").stdout)
    names = {row["variable"] for row in rows}
    assert {"DISPATCHER_MAX_IN_FLIGHT", "DISPATCHER_JOB_IMAGE", "REDIS_PASSWORD",
            "ORCHESTRATOR_SSH_PUBLIC_KEY"} <= names
    assert [row["variable"] for row in rows if not row["description"]] == []
