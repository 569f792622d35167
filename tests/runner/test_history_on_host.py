"""The runner's history row from whole runs on a real host (sshd in a disposable podman
host, the real play through ansible-runner, real PostgreSQL and Redis): the row agrees with
the published result, every phase the run went through is timed, and the ports are the
server's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.runner.conftest import Runner, message, result_for, unique_handle
from tests.support.hosts import Host, vps_host
from tests.support.keys import Keypair

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def host(provisioner_key: Keypair) -> Iterator[Host]:
    with vps_host(name_prefix="infra-history") as h:
        h.authorize_key(provisioner_key.public)
        yield h


async def run_row(db: asyncpg.Connection, request_id: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM runs WHERE request_id = $1", request_id)
    assert row is not None
    return {**dict(row), "phases": json.loads(row["phases"])}


async def test_a_successful_run(runner: Runner, host: Host, redis_client: aioredis.Redis,
                                db) -> None:
    handle = unique_handle("hist-ok")
    runner.register(handle, host.address, host.ssh_port)
    msg = message(handle)
    res = runner.run(msg)
    assert res.rc == 0, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    row = await run_row(db, msg["request_id"])
    assert (row["status"], row["error_kind"], row["reported_by"]) == ("succeeded", None, "runner")
    assert (row["ok_count"], row["changed_count"]) == (result["recap"]["ok"],
                                                       result["recap"]["changed"])
    assert (row["ssh_port_before"], row["ssh_port_after"]) == (host.ssh_port,
                                                               result["ssh_port"])
    assert set(row["phases"]) == {"lock", "ssh_check", "keys", "play", "report"}
    assert row["phases"]["play"] > 0 and row["phases"]["ssh_check"] > 0
    assert row["job_name"] == result["job_name"]
    assert row["finished_at"] >= row["started_at"]


async def test_a_failing_play(runner: Runner, host: Host, redis_client: aioredis.Redis,
                              db) -> None:
    handle = unique_handle("hist-fail")
    runner.register(handle, host.address, host.ssh_port)
    msg = message(handle)
    res = runner.run(msg, SETUP_PLAYBOOK="playbooks/failing.yml")
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    row = await run_row(db, msg["request_id"])
    assert (row["status"], row["error_kind"]) == ("failed", "play_failed")
    assert (row["failed_task"], row["failed_host"]) == ("Fail on purpose", handle)
    assert row["message"] == result["error"]["message"]
    assert (row["ok_count"], row["changed_count"]) == (1, result["recap"]["changed"])
    assert "play" in row["phases"] and row["ssh_port_before"] == host.ssh_port
