"""The ``servers`` table: reading a server, claiming it for a run, atomic status writes.

Two runners never interleave writes for one server: a run holds a per-server advisory lock
on its connection for its whole duration, and every write after the claim is a
compare-and-set on ``last_request_id``, so a run that lost its lock (connection dropped)
cannot overwrite the state written by the run that holds the server now.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from enum import StrEnum

import asyncpg
from pydantic import BaseModel, SecretStr

from runner_image.retrying import Backoff, with_retries
from runner_image.settings import DatabaseSettings

_LOCK_NAMESPACE = "infra-service:server:"
# True while this session holds the server's advisory lock. A bigint advisory lock shows in
# pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_HOLDS_LOCK = (
    "EXISTS (SELECT 1 FROM pg_locks l, (SELECT hashtextextended('infra-service:server:'"
    " || $1, 0) AS k) key WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()"
    " AND l.granted AND l.objsubid = 1"
    " AND l.classid::bigint = ((key.k >> 32) & 4294967295)"
    " AND l.objid::bigint = (key.k & 4294967295))"
)


class ServerStatus(StrEnum):
    NEW = "NEW"
    PROVISIONING = "PROVISIONING"
    REINSTALLING = "REINSTALLING"
    RECOVERING = "RECOVERING"
    READY = "READY"
    FAILED = "FAILED"
    UNREACHABLE = "UNREACHABLE"


class ServerRecord(BaseModel):
    handle: str
    provider: str
    provider_server_id: str | None
    address: str
    ssh_port: int
    ssh_user: str
    has_password: bool
    host_key: str | None
    status: ServerStatus
    status_reason: str | None
    last_request_id: str | None


class ServerBusy(Exception):
    pass


class LockLost(Exception):
    """The run no longer holds its server's lock; nothing may be written for it."""


class WrongCredentialsKey(Exception):
    """pgcrypto could not decrypt a stored secret with CREDENTIALS_KEY."""


class MissingCredentialsKey(Exception):
    pass


_SELECT = (
    "SELECT handle, provider, provider_server_id, address, ssh_port, ssh_user,"
    " root_password_enc IS NOT NULL AS has_password, host_key, status, status_reason,"
    " last_request_id FROM servers WHERE handle = $1"
)


# Errors of a database that is briefly away (restarting, failing over, a dropped
# connection): worth another attempt. SQL errors are not.
TRANSIENT_DB_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                       asyncpg.CannotConnectNowError, TimeoutError, ConnectionError)


async def connect(settings: DatabaseSettings) -> asyncpg.Connection:
    password = settings.database_password.get_secret_value() if settings.database_password else None
    return await asyncpg.connect(settings.database_url, password=password,
                                 timeout=settings.database_connect_timeout)


@contextlib.asynccontextmanager
async def open_store(settings: DatabaseSettings, policy: Backoff) -> AsyncIterator[ServerStore]:
    """The run's connection (retried while the database is briefly away), closed on exit."""
    conn = await with_retries("database connect", lambda: connect(settings), policy,
                              transient=TRANSIENT_DB_ERRORS)
    try:
        yield ServerStore(conn, settings)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)


class ServerStore:
    """One connection per run; it also holds the server's advisory lock."""

    def __init__(self, conn: asyncpg.Connection, settings: DatabaseSettings) -> None:
        self.conn = conn
        self.settings = settings

    async def load(self, handle: str) -> ServerRecord | None:
        row = await self.conn.fetchrow(_SELECT, handle)
        return ServerRecord(**dict(row)) if row else None

    async def try_lock(self, handle: str) -> bool:
        return bool(await self.conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", _LOCK_NAMESPACE + handle))

    async def lock(self, handle: str, wait: float) -> None:
        """Hold the server's advisory lock until the connection closes."""
        deadline = time.monotonic() + wait
        while True:
            if await self.try_lock(handle):
                return
            if time.monotonic() >= deadline:
                raise ServerBusy(
                    f"another run holds server {handle} (waited {wait:g}s); "
                    "retry when it has finished"
                )
            await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))

    async def root_password(self, handle: str) -> SecretStr | None:
        if self.settings.credentials_key is None:
            raise MissingCredentialsKey(
                f"server {handle} has a root password but CREDENTIALS_KEY is not set; "
                "set it to the key the password was stored with"
            )
        try:
            value = await self.conn.fetchval(
                "SELECT pgp_sym_decrypt(root_password_enc, $2) FROM servers WHERE handle = $1",
                handle, self.settings.credentials_key.get_secret_value(),
            )
        except asyncpg.ExternalRoutineInvocationError:
            # pgcrypto's "Wrong key or corrupt data" (SQLSTATE 39000); any other error here
            # (a timeout, a lost connection) says nothing about the key.
            raise WrongCredentialsKey(handle) from None
        return SecretStr(value) if value is not None else None

    async def claim(self, handle: str, request_id: str, status: ServerStatus) -> bool:
        """Mark the run as the server's current one (only with the lock held)."""
        result = await self.conn.execute(
            "UPDATE servers SET status = $3, status_reason = NULL, last_request_id = $2,"  # noqa: S608
            " last_run_started_at = now(), last_run_finished_at = NULL, updated_at = now()"
            " WHERE handle = $1 AND " + _HOLDS_LOCK,
            handle, request_id, status.value,
        )
        return str(result).endswith(" 1")

    async def holds_lock(self, handle: str) -> bool:
        return bool(await self.conn.fetchval("SELECT " + _HOLDS_LOCK, handle))

    async def _guarded(self, handle: str, sql: str, *args: object) -> bool:
        """Run an UPDATE that applies only while this run owns the server: its lock held on
        this connection and ``last_request_id`` still its own. Raises LockLost if the lock
        is gone; False if another run claimed the server."""
        # ``sql`` and _HOLDS_LOCK are constants of this module; values are parameters.
        result = await self.conn.execute(f"{sql} AND {_HOLDS_LOCK}", handle, *args)
        if result.endswith(" 1"):
            return True
        if not await self.holds_lock(handle):
            raise LockLost(f"this run no longer holds the lock of server {handle}; "
                           "its status is left to the run that holds it")
        return False

    async def set_status(self, handle: str, request_id: str, status: ServerStatus,
                         reason: str | None, *, finished: bool = False,
                         ssh_port: int | None = None) -> bool:
        """Compare-and-set on last_request_id, with the lock held; False if another run owns
        the server now. ``ssh_port`` (the port the play left sshd on) is stored in the same
        statement."""
        return await self._guarded(
            handle,
            "UPDATE servers SET status = $3, status_reason = $4, updated_at = now(),"
            " last_run_finished_at = CASE WHEN $5 THEN now() ELSE last_run_finished_at END,"
            " ssh_port = COALESCE($6::integer, ssh_port)"
            " WHERE handle = $1 AND last_request_id = $2",
            request_id, status.value, reason, finished, ssh_port,
        )

    async def record_host_key(self, handle: str, request_id: str, host_key: str) -> bool:
        return await self._guarded(
            handle,
            "UPDATE servers SET host_key = $3, host_key_recorded_at = now(), updated_at = now()"
            " WHERE handle = $1 AND last_request_id = $2",
            request_id, host_key,
        )
