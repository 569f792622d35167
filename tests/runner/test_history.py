"""The runner's row in the run history, on real PostgreSQL: the run's step sequence over the
fakes of tests/support/runner_fakes.py with its steps timed, then the row written the way
``run`` writes it (runner_image.run._record_history). A successful play and a failing one;
the dispatcher's columns kept when it inserted first; no secret in the row; the migration
that made the table."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from contracts.connections import RedisSettings
from contracts.messages import ProvisionerMessage
from contracts.results import ErrorKind, PlayRecap, ResultError, now
from contracts.run_history import DISPATCHER_ROLE, MESSAGE_LIMIT
from runner_image import run as run_module
from runner_image.db import ServerStore
from runner_image.history import TimedSteps
from runner_image.job import Job
from runner_image.migrations import MIGRATIONS_DIR, apply_migrations
from runner_image.play import PlayOutcome, PlayStatus
from runner_image.redaction import Redactor
from runner_image.settings import RunnerSettings
from tests.runner.conftest import Runner, message
from tests.support.keys import Keypair
from tests.support.runner_fakes import (
    FakeSteps,
    FakeStore,
    FakeWorkspace,
    context,
    server_record,
    unit_settings,
)
from tests.support.services import PostgresServer

SECRET = "Provider-Pa55word-9f1e"


@pytest.fixture
def settings(tmp_path: Path, provisioner_key: Keypair,
             orchestrator_key: Keypair) -> RunnerSettings:
    return unit_settings(tmp_path / "project", provisioner_key, orchestrator_key,
                         provider_api_username=SecretStr("t4v-user"),
                         provider_api_password=SecretStr(SECRET))


async def run_and_record(tmp_path: Path, settings: RunnerSettings, key: Keypair,
                         db: asyncpg.Connection, steps: FakeSteps,
                         before: Callable[[ProvisionerMessage], Awaitable[None]] | None = None,
                         **flags: Any) -> dict[str, Any]:
    """One run over fakes (the server on port 2222), its row written as ``run`` writes it
    (after ``before``, given the message); the row read back."""
    handle = f"hist-{uuid.uuid4().hex[:6]}"
    message = ProvisionerMessage(server_handle=handle, request_id=f"req-{handle}",
                                 enqueued_at=now() - timedelta(minutes=3), **flags)
    redact = Redactor([SECRET])
    ctx = dataclasses.replace(context(settings), message=message, redact=redact,
                              job_name=f"prov-{handle}")
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    job = Job(ctx, FakeStore(server_record(handle, ssh_port=2222)),
              FakeWorkspace(scratch, key.public), TimedSteps(steps, ctx.trace))
    info = run_module.RunInfo(RedisSettings(), redact, ctx.job_name, now(), time.monotonic())
    if before is not None:
        await before(message)
    outcome = await job.execute()
    await run_module._record_history(info, ctx, outcome, ServerStore(db, ctx.db_settings),
                                     published=True)
    row = await db.fetchrow("SELECT * FROM runs WHERE request_id = $1", message.request_id)
    assert row is not None, "no row written"
    return {**dict(row), "phases": json.loads(row["phases"])}


async def test_a_successful_run_records_its_phases_counts_and_ports(
        tmp_path: Path, settings: RunnerSettings, provisioner_key: Keypair, db) -> None:
    played = PlayOutcome(PlayStatus.SUCCESSFUL, PlayRecap(ok=41, changed=17),
                         stats={"infra_ssh": {"connect_port": 2201}})
    row = await run_and_record(tmp_path, settings, provisioner_key, db,
                               FakeSteps(played=played))
    assert (row["status"], row["error_kind"], row["reported_by"]) == (
        "succeeded", None, "runner")
    assert set(row["phases"]) == {"lock", "ssh_check", "keys", "play"}
    assert all(seconds >= 0 for seconds in row["phases"].values())
    assert (row["ok_count"], row["changed_count"]) == (41, 17)
    assert (row["ssh_port_before"], row["ssh_port_after"]) == (2222, 2201)
    assert row["action"] == "setup" and row["job_name"].startswith("prov-hist-")
    assert row["runner_version"] and row["started_at"] <= row["finished_at"]
    assert row["queued_at"] < row["started_at"] - timedelta(minutes=2)  # its enqueued_at
    assert row["failed_task"] is None and row["message"] is None


async def test_a_failing_play_records_its_task_and_host_without_secrets(
        tmp_path: Path, settings: RunnerSettings, provisioner_key: Keypair, db) -> None:
    error = ResultError(kind=ErrorKind.PLAY_FAILED,
                        message=f"docker login failed with {SECRET}; the module said "
                                f"api_token=tok-8a7b6c5d " + "y" * 2000,
                        task="docker : log in to the registry", host="web-x")
    played = PlayOutcome(PlayStatus.FAILED, PlayRecap(ok=5, changed=1, failed=1), error)
    row = await run_and_record(tmp_path, settings, provisioner_key, db,
                               FakeSteps(played=played))
    assert (row["status"], row["error_kind"]) == ("failed", "play_failed")
    assert (row["failed_task"], row["failed_host"]) == ("docker : log in to the registry",
                                                        "web-x")
    assert SECRET not in row["message"] and "tok-8a7b6c5d" not in row["message"]
    assert row["message"].startswith("docker login failed with ***; the module said "
                                     "api_token=***")
    assert len(row["message"]) <= MESSAGE_LIMIT
    assert (row["ok_count"], row["changed_count"]) == (5, 1)
    assert (row["ssh_port_before"], row["ssh_port_after"]) == (2222, 2222)
    assert "play" in row["phases"]


async def test_a_reinstall_is_timed_as_its_own_phase(
        tmp_path: Path, settings: RunnerSettings, provisioner_key: Keypair, db) -> None:
    row = await run_and_record(tmp_path, settings, provisioner_key, db, FakeSteps(),
                               force_reinstall=True)
    assert set(row["phases"]) == {"lock", "reinstall", "ssh_check", "keys", "play"}
    assert row["action"] == "reinstall"


async def test_the_dispatchers_columns_are_kept(
        tmp_path: Path, settings: RunnerSettings, provisioner_key: Keypair, db) -> None:
    """The dispatcher inserted first (it created the Job): its queued time, replica and
    image stay; the runner adds its own columns."""
    queued = datetime.now(UTC) - timedelta(hours=1)

    async def dispatcher_insert(message: ProvisionerMessage) -> None:
        await db.execute(
            "INSERT INTO runs (request_id, server_handle, action, job_name,"
            " dispatcher_replica, runner_image, queued_at, launched_at)"
            " VALUES ($1, $2, 'setup', $3, 'replica-a', 'runner:1', $4, $4)",
            message.request_id, message.server_handle, f"prov-{message.server_handle}",
            queued)

    row = await run_and_record(tmp_path, settings, provisioner_key, db, FakeSteps(),
                               before=dispatcher_insert)
    assert row["queued_at"] == queued
    assert (row["dispatcher_replica"], row["runner_image"]) == ("replica-a", "runner:1")
    assert row["status"] == "succeeded" and "play" in row["phases"]


async def test_the_migration_made_the_table_and_the_dispatchers_role(db) -> None:
    assert await db.fetchval("SELECT to_regclass('public.runs') IS NOT NULL")
    assert await db.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", DISPATCHER_ROLE)
    grants = {r["privilege_type"] for r in await db.fetch(
        "SELECT privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = $1 AND table_name = 'runs'", DISPATCHER_ROLE)}
    assert grants == {"SELECT", "INSERT", "UPDATE", "DELETE"}


async def test_the_runner_process_writes_its_row(runner: Runner, db) -> None:
    """``python -m runner_image`` as the Job runs it: a message for a server the source of
    truth does not know ends after the lock, and the row says so."""
    msg = message(f"nosuch-{uuid.uuid4().hex[:6]}")
    res = runner.run(msg)
    assert res.rc == 10, res.explain
    assert res.events("run history written"), res.explain
    row = await db.fetchrow("SELECT * FROM runs WHERE request_id = $1", msg["request_id"])
    assert row is not None, res.explain
    assert (row["status"], row["error_kind"], row["reported_by"]) == (
        "failed", "unknown_server", "runner")
    assert set(json.loads(row["phases"])) == {"lock", "report"}
    assert row["job_name"] == runner.environment(msg)["JOB_NAME"]
    assert row["queued_at"] == datetime.fromisoformat(msg["enqueued_at"])
    assert row["ssh_port_before"] is None and row["message"]


async def test_a_migrating_role_that_may_not_create_roles_still_migrates(
        pg_srv: PostgresServer, tmp_path: Path) -> None:
    """Where a platform owns roles the migration cannot create the dispatcher's: it says so
    and goes on; the platform's role, created later, is granted as the README says. (A copy
    of the migrations naming a role of this test's own, so the session's role is untouched.)"""
    suffix = uuid.uuid4().hex[:8]
    role, owner, database = f"hist_group_{suffix}", f"hist_owner_{suffix}", f"hist_db_{suffix}"
    for path in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text().replace(DISPATCHER_ROLE, role))
    admin = await asyncpg.connect(pg_srv.dsn(), password=pg_srv.password)
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-pw'")  # no CREATEROLE
        await admin.execute(f"CREATE DATABASE {database} OWNER {owner}")
        conn = await asyncpg.connect(pg_srv.dsn(database).replace("postgres@", f"{owner}@"),
                                     password="owner-pw")
        warnings: list[str] = []
        conn.add_log_listener(lambda _c, msg: warnings.append(str(msg)))
        try:
            assert await apply_migrations(conn, tmp_path) == ["0001_servers", "0002_runs"]
            assert not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            assert any(f"role {role} not created" in w for w in warnings), warnings
            # The platform creates the role; the owner grants it (README, Run history).
            await admin.execute(f"CREATE ROLE {role} NOLOGIN")
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON runs TO {role}")
            await conn.execute(f"GRANT SELECT (handle) ON servers TO {role}")
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()
