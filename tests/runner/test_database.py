"""Migrations, register-server and the atomic status writes, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import asyncpg
import pytest

from runner_image.db import LockLost, ServerStatus, ServerStore, WrongCredentialsKey
from runner_image.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations
from runner_image.settings import DatabaseSettings
from tests.runner.conftest import (
    CREDENTIALS_KEY,
    REPO,
    Runner,
    RunnerDb,
    base_process_env,
    db_env,
    run_cli,
    server_row,
    unique_handle,
)
from tests.support.services import PostgresServer


async def test_migrate_is_idempotent_and_recorded(runner_db: RunnerDb, db) -> None:
    again = run_cli(["migrate"], {**base_process_env(), **db_env(runner_db)})
    assert again.returncode == 0, again.stderr
    assert '"applied": []' in again.stderr
    rows = await db.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


async def test_concurrent_migrate_on_a_fresh_database(pg_srv: PostgresServer) -> None:
    admin = await asyncpg.connect(pg_srv.dsn(), password=pg_srv.password)
    await admin.execute("DROP DATABASE IF EXISTS migrate_race")
    await admin.execute("CREATE DATABASE migrate_race")
    try:
        env = {**base_process_env(), "DATABASE_URL": pg_srv.dsn("migrate_race"),
               "DATABASE_PASSWORD": pg_srv.password}
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner_image", "migrate", env=env, cwd=REPO,
            stderr=asyncio.subprocess.PIPE) for _ in range(2)]
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err
        conn = await asyncpg.connect(pg_srv.dsn("migrate_race"), password=pg_srv.password)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(
            list(MIGRATIONS_DIR.glob("*.sql")))
        await conn.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS migrate_race WITH (FORCE)")
        await admin.close()


async def test_new_migrations_apply_in_order_and_changed_ones_are_refused(
        db, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9001_probe.sql").write_text("CREATE TABLE migration_probe (id int);")
    (tmp_path / "9002_probe.sql").write_text("INSERT INTO migration_probe VALUES (1);")
    try:
        assert await apply_migrations(db, tmp_path) == ["9001_probe", "9002_probe"]
        assert await db.fetchval("SELECT count(*) FROM migration_probe") == 1
        assert await apply_migrations(db, tmp_path) == []
        (tmp_path / "9001_probe.sql").write_text("CREATE TABLE migration_probe (id bigint);")
        with pytest.raises(MigrationError, match=r"9001_probe\.sql was changed"):
            await apply_migrations(db, tmp_path)
    finally:
        await db.execute("DROP TABLE IF EXISTS migration_probe")
        await db.execute("DELETE FROM schema_migrations WHERE version LIKE '9%_probe'")


async def test_register_server_encrypts_the_password(runner: Runner, db) -> None:
    handle = unique_handle("reg")
    runner.register(handle, "10.0.0.5", 2222, password="S3cret-root-pw")
    row = await server_row(db, handle)
    assert (row["address"], row["ssh_port"], row["ssh_user"], row["status"]) == (
        "10.0.0.5", 2222, "root", "NEW")
    assert b"S3cret-root-pw" not in bytes(row["root_password_enc"])
    plain = await db.fetchval("SELECT pgp_sym_decrypt(root_password_enc, $2) FROM servers "
                              "WHERE handle = $1", handle, CREDENTIALS_KEY)
    assert plain == "S3cret-root-pw"
    with pytest.raises(asyncpg.PostgresError):
        await db.fetchval("SELECT pgp_sym_decrypt(root_password_enc, 'wrong') FROM servers "
                          "WHERE handle = $1", handle)

    # An update without a password keeps it; an address change forgets the host key.
    await db.execute("UPDATE servers SET host_key = 'ssh-ed25519 AAAA' WHERE handle = $1", handle)
    runner.register(handle, "10.0.0.5", 2222, user="admin")
    row = await server_row(db, handle)
    assert row["ssh_user"] == "admin" and row["root_password_enc"] is not None
    assert row["host_key"] == "ssh-ed25519 AAAA"
    runner.register(handle, "10.0.0.6", 2222, user="admin")
    assert (await server_row(db, handle))["host_key"] is None
    await db.execute("UPDATE servers SET host_key = 'ssh-ed25519 AAAA' WHERE handle = $1", handle)
    runner.register(handle, "10.0.0.6", 2222, extra=("--forget-host-key", "--clear-password"))
    row = await server_row(db, handle)
    assert row["host_key"] is None and row["root_password_enc"] is None


def test_register_server_takes_no_password_argument(runner: Runner) -> None:
    done = run_cli(["register-server", "--handle", "x", "--address", "a",
                    "--password", "oops"], runner.environment(None))
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


def test_register_server_rejects_bad_values(runner: Runner) -> None:
    done = run_cli(["register-server", "--handle", "bad handle!", "--address", "a"],
                   runner.environment(None))
    assert done.returncode == 13 and "servers_handle_check" in done.stderr


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
