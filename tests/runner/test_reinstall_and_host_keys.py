"""Host keys (recorded, verified, replaced only by a reinstall) and the provider reinstall,
including each provider error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.runner.conftest import Keypair, Runner, message, result_for, server_row, unique_handle
from tests.runner.test_run_without_host import silent_port  # noqa: F401 (fixture)
from tests.support.hosts import Host, vps_host
from tests.support.provider_api import ProviderApi
from tests.support.services import free_port


@pytest.fixture(scope="module")
def host(provisioner_key: Keypair) -> Iterator[Host]:
    with vps_host(name_prefix="infra-reinstall") as h:
        h.authorize_key(provisioner_key.public)
        yield h


def current_host_key(host: Host) -> str:
    return " ".join(host.host_public_key().split()[:2])


@pytest.mark.hosts
async def test_host_key_lifecycle_and_reinstall(
        runner: Runner, host: Host, provider: ProviderApi, redis_client: aioredis.Redis, db,
        provisioner_key: Keypair) -> None:
    handle = unique_handle("hk")
    runner.register(handle, host.address, host.ssh_port, provider_server_id="4242")

    # 1. First contact records the key.
    first = message(handle)
    res = runner.run(first)
    assert res.rc == 0, res.explain
    recorded = (await server_row(db, handle))["host_key"]
    assert recorded == current_host_key(host)

    # 2. The server's key changes without a reinstall: refused before logging in.
    host.regenerate_host_keys()
    changed = message(handle)
    res = runner.run(changed)
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, changed["request_id"])
    assert result["error"]["kind"] == "host_key_mismatch"
    assert "force_reinstall" in result["error"]["message"]
    assert len(res.events("ssh attempt failed")) == 1  # not retried
    assert not res.events("play starting")
    # The play's process, started ahead, was stopped at its gate: it ran nothing.
    assert res.events("ansible status")[-1]["ansible_status"] == "abandoned"
    assert not res.events("play released") and not res.events("ansible event")
    row = await server_row(db, handle)
    assert row["host_key"] == recorded and row["status"] == "FAILED"

    # 3. A reinstall: the provider's task is pending twice, then done; the "new system"
    #    has new host keys and only the key the runner handed to the provider.
    def reinstalled(server_id: str, body: dict[str, Any]) -> None:
        host.regenerate_host_keys()
        host.write_file("/root/.ssh/authorized_keys", body["ssh_key"] + "\n", "0600")

    provider.reset(pending_polls=2, on_reinstall=reinstalled)
    reinstall = message(handle, force_reinstall=True)
    res = runner.run(reinstall, PROVIDER_REQUEST_TIMEOUT="20")
    assert res.rc == 0, res.explain
    result = await result_for(redis_client, runner.keys, reinstall["request_id"])
    assert result["status"] == "succeeded" and result["action"] == "reinstall"
    posts = [r for r in provider.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].path == "/api/server/4242/reinstall"
    assert posts[0].body["ssh_key"].split()[1] == provisioner_key.body
    assert posts[0].body["os"] == "debian-12"
    polls = [r for r in provider.requests if r.method == "GET" and "/task/" in r.path]
    assert len(polls) == 3  # pending, pending, done
    assert all(r.authorized for r in provider.requests)
    assert polls[0].path.endswith(f"/task/{result['details']['provider_task_id']}")
    row = await server_row(db, handle)
    assert row["host_key"] == current_host_key(host) != recorded
    assert row["status"] == "READY"

    # 4. The new key is now the verified one.
    again = message(handle)
    res = runner.run(again)
    assert res.rc == 0, res.explain


@pytest.mark.parametrize(("behaviour", "env", "expected"), [
    ({}, {"PROVIDER_API_PASSWORD": "not-the-password"}, "wronglogin"),
    ({"invalid_task": True}, {}, "Invalid task ID"),
    ({"reinstall_status": 502}, {}, "HTTP 502"),
    ({"poll_status": 503}, {}, "HTTP 503"),
    ({"reinstall_delay": 3.0}, {"PROVIDER_REQUEST_TIMEOUT": "1"}, "no answer within"),
    ({"non_json": True}, {}, "non-JSON"),
], ids=["wronglogin", "invalid-task", "5xx", "poll-5xx", "timeout", "non-json"])
async def test_provider_errors_end_in_a_failure_with_the_providers_message(
        runner: Runner, provider: ProviderApi, redis_client: aioredis.Redis, db,
        behaviour: dict[str, Any], env: dict[str, str], expected: str) -> None:
    provider.reset(**behaviour)
    handle = unique_handle("prov")
    runner.register(handle, "127.0.0.1", free_port(), provider_server_id="77")
    msg = message(handle, force_reinstall=True)
    res = runner.run(msg, **env)
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "failed" and result["action"] == "reinstall"
    assert result["error"]["kind"] == "provider_error"
    assert expected in result["error"]["message"]
    assert provider.behaviour.password not in res.stderr + str(result)
    assert not res.events("ssh attempt failed")  # no SSH before the provider is done
    row = await server_row(db, handle)
    assert row["status"] == "FAILED" and expected in row["status_reason"]


async def test_reinstall_without_provider_credentials_is_rejected(
        runner: Runner, redis_client: aioredis.Redis, db) -> None:
    handle = unique_handle("nocred")
    runner.register(handle, "127.0.0.1", free_port(), provider_server_id="77")
    msg = message(handle, force_reinstall=True)
    env = runner.environment(msg)
    del env["PROVIDER_API_PASSWORD"]
    res = runner.run_env(env)
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert "PROVIDER_API_PASSWORD" in result["error"]["message"]
    assert (await server_row(db, handle))["status"] == "NEW"


@pytest.mark.hosts
async def test_a_run_waiting_for_the_lock_reads_what_the_reinstall_left(
        runner: Runner, host: Host, redis_client: aioredis.Redis, db, runner_db) -> None:
    """Lock, then read: a run queued behind a reinstall uses the reinstall's new host key
    (read after the lock), not the one recorded before it."""
    handle = unique_handle("queued")
    runner.register(handle, host.address, host.ssh_port, provider_server_id="4243")
    res = runner.run(message(handle))
    assert res.rc == 0, res.explain
    old_key = (await server_row(db, handle))["host_key"]

    reinstall = await runner_db.connect()  # stands in for the reinstall run holding the lock
    await reinstall.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))",
                            f"infra-service:server:{handle}")
    msg = message(handle)
    proc = runner.start(msg, SERVER_LOCK_TIMEOUT="120")
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the run has started and now waits for the lock
            seen.append(line)
            if '"run started"' in line:
                break
        # What the reinstall does meanwhile: new system, new host key recorded, READY.
        host.regenerate_host_keys()
        new_key = current_host_key(host)
        await reinstall.execute(
            "UPDATE servers SET host_key = $2, status = 'READY', last_request_id = 'reinstall-1'"
            " WHERE handle = $1", handle, new_key)
        assert (await server_row(db, handle))["last_request_id"] == "reinstall-1"
    finally:
        await reinstall.close()  # the reinstall ends: its lock goes
    _, rest = proc.communicate(timeout=180)
    stderr = "".join(seen) + rest
    assert proc.returncode == 0, stderr
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "succeeded"
    row = await server_row(db, handle)
    assert row["host_key"] == new_key != old_key
    assert row["status"] == "READY" and row["last_request_id"] == msg["request_id"]


async def test_a_run_that_lost_its_lock_writes_no_status(
        runner: Runner, redis_client: aioredis.Redis, db, runner_db,
        silent_port: int) -> None:  # noqa: F811
    """The run's database session dies mid-run and another run takes the server: the first
    run's final status write finds the lock gone and writes nothing."""
    handle = unique_handle("lost")
    runner.register(handle, "127.0.0.1", silent_port)
    msg = message(handle)
    proc = runner.start(msg, SSH_ATTEMPTS="3", SSH_CONNECT_TIMEOUT="2", SSH_COMMAND_TIMEOUT="3",
                        SSH_BACKOFF_BASE="1")
    other = await runner_db.connect()
    try:
        deadline = time.monotonic() + 60
        while (await server_row(db, handle))["last_request_id"] != msg["request_id"]:
            assert time.monotonic() < deadline, "the run never claimed the server"
            await asyncio.sleep(0.1)
        # The runner's session (the one holding the advisory lock) is cut off...
        killed = await other.fetchval(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l, "
            "(SELECT hashtextextended($1, 0) AS k) key WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = ((key.k >> 32) & 4294967295) "
            "AND l.objid::bigint = (key.k & 4294967295)", f"infra-service:server:{handle}")
        assert killed == 1
        # ...and another run takes the server (same last_request_id: only the lock says so).
        await asyncio.sleep(0.5)
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                    f"infra-service:server:{handle}")
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        await other.close()
    assert proc.returncode == 11, stderr  # its own outcome (unreachable), still reported
    assert "the run lost the server's lock" in stderr
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "unreachable"
    row = await server_row(db, handle)
    assert row["status"] == "PROVISIONING" and row["last_run_finished_at"] is None
