"""A migrated database of its own for the dispatcher's history tests, and the dispatcher's
login role (a member of the migration's infra_service_dispatcher, as the README says to
make it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from pydantic import SecretStr

from contracts.run_history import DISPATCHER_ROLE
from dispatcher.history.settings import HistorySettings
from runner_image.migrations import apply_migrations
from tests.support.services import PostgresServer

DB_NAME = "dispatcher_history"
LOGIN = "dispatcher_history_login"
LOGIN_PASSWORD = "dispatcher-login-secret-3c1d"


@dataclass(frozen=True)
class HistoryDb:
    server: PostgresServer

    @property
    def admin_url(self) -> str:
        return self.server.dsn(DB_NAME)

    @property
    def url(self) -> str:
        """The dispatcher's own login, without its password (that is DATABASE_PASSWORD)."""
        return f"postgresql://{LOGIN}@127.0.0.1:{self.server.port}/{DB_NAME}"

    def settings(self, **changes: object) -> HistorySettings:
        return HistorySettings(database_url=SecretStr(self.url),
                               database_password=SecretStr(LOGIN_PASSWORD), **changes)

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.url, "DATABASE_PASSWORD": LOGIN_PASSWORD}

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.admin_url, password=self.server.password)


@pytest.fixture(scope="session")
def history_db(pg_srv: PostgresServer) -> HistoryDb:
    pg_srv.ensure_database(DB_NAME)
    db = HistoryDb(pg_srv)

    async def prepare() -> None:
        conn = await db.admin()
        try:
            await apply_migrations(conn)
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", LOGIN):
                await conn.execute(f"CREATE ROLE {LOGIN} LOGIN PASSWORD '{LOGIN_PASSWORD}' "
                                   f"IN ROLE {DISPATCHER_ROLE}")
        finally:
            await conn.close()

    asyncio.run(prepare())
    return db


@pytest.fixture
async def admin(history_db: HistoryDb) -> AsyncIterator[asyncpg.Connection]:
    conn = await history_db.admin()
    try:
        yield conn
    finally:
        await conn.close()


async def add_server(admin: asyncpg.Connection, prefix: str = "web") -> str:
    handle = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await admin.execute("INSERT INTO servers (handle, address) VALUES ($1, '192.0.2.7')",
                        handle)
    return handle


async def run_row(admin: asyncpg.Connection, request_id: str) -> dict[str, object] | None:
    row = await admin.fetchrow("SELECT * FROM runs WHERE request_id = $1", request_id)
    return dict(row) if row else None
