"""The server store (runner_image.db), on a real PostgreSQL: status writes are compare-and-set
and need the server's lock, and only a wrong key is reported as one."""

from __future__ import annotations

import asyncpg
import pytest

from runner_image.db import LockLost, ServerStatus, ServerStore, WrongCredentialsKey
from runner_image.settings import DatabaseSettings
from tests.runner.conftest import (
    CREDENTIALS_KEY,
    Runner,
    RunnerDb,
    server_row,
    unique_handle,
)


async def test_status_writes_are_compare_and_set(runner: Runner, runner_db: RunnerDb,
                                                 db) -> None:
    handle = unique_handle("cas")
    runner.register(handle, "10.0.0.7", 22)
    settings = DatabaseSettings(database_url=runner_db.url)
    store = ServerStore(db, settings)
    await store.lock(handle, 5)
    assert await store.claim(handle, "req-a", ServerStatus.PROVISIONING)
    assert await store.claim(handle, "req-b", ServerStatus.RECOVERING)  # a newer run
    # The older run's late write must not overwrite the newer run's state.
    assert not await store.set_status(handle, "req-a", ServerStatus.READY, None, finished=True)
    assert await store.set_status(handle, "req-b", ServerStatus.FAILED, "boom", finished=True)
    row = await server_row(db, handle)
    assert (row["status"], row["status_reason"], row["last_request_id"]) == (
        "FAILED", "boom", "req-b")



async def test_writes_need_the_servers_lock(runner: Runner, runner_db: RunnerDb, db) -> None:
    handle = unique_handle("nolock")
    runner.register(handle, "10.0.0.8", 22)
    settings = DatabaseSettings(database_url=runner_db.url)
    holder = ServerStore(db, settings)
    await holder.lock(handle, 5)
    assert await holder.claim(handle, "req-a", ServerStatus.PROVISIONING)
    other = ServerStore(await runner_db.connect(), settings)  # a session without the lock
    try:
        assert not await other.try_lock(handle)
        assert not await other.claim(handle, "req-b", ServerStatus.RECOVERING)
        with pytest.raises(LockLost, match=handle):
            await other.set_status(handle, "req-a", ServerStatus.READY, None, finished=True)
        with pytest.raises(LockLost):
            await other.record_host_key(handle, "req-a", "ssh-ed25519 AAAA")
    finally:
        await other.conn.close()
    # The holder's own writes go through, the port with the status in one statement.
    assert await holder.set_status(handle, "req-a", ServerStatus.READY, None, finished=True,
                                   ssh_port=2222)
    row = await server_row(db, handle)
    assert (row["status"], row["ssh_port"], row["last_request_id"]) == ("READY", 2222, "req-a")
    await db.execute("SELECT pg_advisory_unlock_all()")



async def test_only_a_wrong_key_is_reported_as_one(runner: Runner, runner_db: RunnerDb,
                                                   db) -> None:
    """pgcrypto's refusal is the key's fault; a statement cancelled while another session
    holds the table (a migration, say) is not, and must not read as one."""
    handle = unique_handle("pwread")
    runner.register(handle, "10.0.0.9", 22, password="a-root-password")
    wrong = ServerStore(db, DatabaseSettings(database_url=runner_db.url,
                                             credentials_key="not-the-key"))
    with pytest.raises(WrongCredentialsKey):
        await wrong.root_password(handle)
    right = ServerStore(db, DatabaseSettings(database_url=runner_db.url,
                                             credentials_key=CREDENTIALS_KEY))
    assert (await right.root_password(handle)).get_secret_value() == "a-root-password"
    blocker = await runner_db.connect()
    try:
        await db.execute("SET statement_timeout = '300ms'")
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE servers IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(asyncpg.QueryCanceledError):
                await right.root_password(handle)
    finally:
        await db.execute("RESET statement_timeout")
        await blocker.close()
