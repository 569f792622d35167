"""The dispatcher's database role (created and granted by the runs migration) can do what
the history needs and nothing else: write, read and prune runs; read the servers' handles;
not their other columns, not a write to servers, not the schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.dispatcher.history.conftest import LOGIN_PASSWORD, HistoryDb, add_server


@pytest.fixture
async def as_dispatcher(history_db: HistoryDb) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(history_db.url, password=LOGIN_PASSWORD)
    try:
        yield conn
    finally:
        await conn.close()


async def test_the_role_does_what_the_history_needs(
        as_dispatcher: asyncpg.Connection, admin: asyncpg.Connection) -> None:
    handle = await add_server(admin, "role")
    rid = f"role-{handle}"
    await as_dispatcher.execute(
        "INSERT INTO runs (request_id, server_handle, action, queued_at)"
        " VALUES ($1, $2, 'setup', $3)", rid, handle, datetime.now(UTC))
    await as_dispatcher.execute("UPDATE runs SET status = 'failed' WHERE request_id = $1", rid)
    assert await as_dispatcher.fetchval(
        "SELECT status FROM runs WHERE request_id = $1", rid) == "failed"
    assert await as_dispatcher.fetchval(
        "SELECT handle FROM servers WHERE handle = $1", handle) == handle
    assert await as_dispatcher.execute("DELETE FROM runs WHERE request_id = $1", rid) \
        == "DELETE 1"


@pytest.mark.parametrize("statement", [
    "UPDATE servers SET status = 'READY'",
    "INSERT INTO servers (handle, address) VALUES ('intruder', '192.0.2.1')",
    "DELETE FROM servers",
    "SELECT address FROM servers",
    "SELECT root_password_enc FROM servers",
    "SELECT * FROM servers",
    "TRUNCATE runs",
    "DROP TABLE runs",
    "ALTER TABLE runs ADD COLUMN x int",
    "CREATE TABLE public.mine (id int)",
    "SELECT * FROM schema_migrations",
])
async def test_the_role_can_do_nothing_else(as_dispatcher: asyncpg.Connection,
                                            statement: str) -> None:
    with pytest.raises((asyncpg.InsufficientPrivilegeError,)):
        await as_dispatcher.execute(statement)
