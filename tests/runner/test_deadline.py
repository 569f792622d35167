"""One deadline for the whole run: each phase slow in turn (provider task, SSH, the lock,
the play), the status and the result are still written before the Job's deadline.

Kubernetes counts activeDeadlineSeconds from the Job's start; the runner counts from the
earlier of JOB_DEADLINE_AT (handed over by the dispatcher, see the unit tests at the end and
tests/kube/test_runner_deadline.py against a real control plane) and its own process start.
The cases below give no JOB_DEADLINE_AT, so the process start is what counts: the runner is
started here through ``sh -c 'sleep S; exec python ...'``:
``exec`` keeps the process (and its start time), so the runner begins with S seconds of its
deadline already gone, as after a slow pod start. The settings of each case fit the
deadline (else they are refused, see the last test); what is left after the slow start
does not, so the deadline is what bounds the slow phase.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from runner_image.deadline import RunDeadline, parse_deadline_at
from tests.runner.conftest import (
    REPO,
    Keypair,
    Runner,
    message,
    parse_logs,
    result_for,
    server_row,
    unique_handle,
)
from tests.runner.test_run_without_host import silent_port  # noqa: F401 (fixture)
from tests.support.hosts import Host, vps_host
from tests.support.provider_api import ProviderApi
from tests.support.services import free_port

RESERVE = 5


def run_late(runner: Runner, msg: dict[str, Any], late: float, deadline: float,
             **overrides: str) -> tuple[int, str, float]:
    """Run the runner as if its pod had started ``late`` seconds before it; returns the
    exit code, stderr and the wall-clock time the pod "started"."""
    env = runner.environment(msg, JOB_ACTIVE_DEADLINE_SECONDS=str(deadline),
                             REPORT_RESERVE_SECONDS=str(RESERVE), **overrides)
    launched = time.time()
    proc = subprocess.Popen(["sh", "-c", f'sleep {late}; exec "$0" -m runner_image',
                             sys.executable], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=deadline + 120)
    return proc.returncode, stderr, launched


async def assert_reported_in_time(redis: aioredis.Redis, runner: Runner, db: asyncpg.Connection,
                                  msg: dict[str, Any], launched: float, deadline: float,
                                  *, claimed: bool = True) -> dict[str, Any]:
    result = await result_for(redis, runner.keys, msg["request_id"])
    finished = datetime.fromisoformat(result["finished_at"]).timestamp()
    assert finished < launched + deadline, (finished - launched, deadline)
    assert result["status"] == "timed_out", result
    assert result["error"]["kind"] == "deadline_exceeded"
    assert f"JOB_ACTIVE_DEADLINE_SECONDS={deadline:g}s" in result["error"]["message"]
    row = await server_row(db, msg["server_handle"])
    if claimed:
        assert row["status"] == "FAILED" and "JOB_ACTIVE_DEADLINE_SECONDS" in row["status_reason"]
        assert row["last_run_finished_at"].timestamp() < launched + deadline
    return result


async def test_slow_provider_task(runner: Runner, provider: ProviderApi,
                                  redis_client: aioredis.Redis, db) -> None:
    provider.reset(pending_polls=10**6)  # the reinstall never completes
    handle = unique_handle("dl-prov")
    runner.register(handle, "127.0.0.1", free_port(), provider_server_id="55")
    msg = message(handle, force_reinstall=True)
    # 1 lock + 1 request + 15 task + 3 SSH wait + 4 keys + 1 play + 5 reserve = 30
    rc, stderr, launched = run_late(
        runner, msg, late=12, deadline=30, SERVER_LOCK_TIMEOUT="1",
        PROVIDER_REQUEST_TIMEOUT="1", PROVIDER_TASK_TIMEOUT="15", REINSTALL_SSH_TIMEOUT="3",
        SSH_COMMAND_TIMEOUT="2", PLAY_TIMEOUT="1")
    assert rc == 12, stderr
    result = await assert_reported_in_time(redis_client, runner, db, msg, launched, 30)
    # The deadline trips in the task wait's own check or, when a pause overshoots on a loaded
    # machine, in the next poll's: either way the message names the provider's task.
    phase = result["error"]["message"]
    assert ("the wait for provider task 1000" in phase
            or "the provider call GET server/55/task/1000" in phase), phase
    assert any(r.method == "GET" for r in provider.requests)  # it did poll meanwhile


async def test_slow_ssh(runner: Runner, redis_client: aioredis.Redis, db,
                        silent_port: int) -> None:  # noqa: F811
    handle = unique_handle("dl-ssh")
    runner.register(handle, "127.0.0.1", silent_port)
    msg = message(handle)
    # 1 lock + (5 x 4 + 0.2 x 15) SSH check + 8 keys + 1 play + 5 reserve = 38
    rc, stderr, launched = run_late(
        runner, msg, late=20, deadline=40, SERVER_LOCK_TIMEOUT="1", SSH_ATTEMPTS="5",
        SSH_COMMAND_TIMEOUT="4", SSH_CONNECT_TIMEOUT="4", SSH_BACKOFF_BASE="0.2",
        PLAY_TIMEOUT="1")
    assert rc == 12, stderr
    result = await assert_reported_in_time(redis_client, runner, db, msg, launched, 40)
    assert "SSH check" in result["error"]["message"]
    logs = parse_logs(stderr)
    attempts = [e for e in logs if e["event"] == "ssh attempt failed"]
    assert 1 <= len(attempts) < 5  # cut short by the deadline, not by SSH_ATTEMPTS
    # The play's process waited at its gate through the check and was stopped there.
    assert [e["ansible_status"] for e in logs if e["event"] == "ansible status"] == [
        "starting", "running", "abandoned"]


async def test_slow_lock(runner: Runner, redis_client: aioredis.Redis, db, runner_db) -> None:
    handle = unique_handle("dl-lock")
    runner.register(handle, "127.0.0.1", free_port())
    holder = await runner_db.connect()  # another run holds the server
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))",
                             f"infra-service:server:{handle}")
        msg = message(handle)
        # 20 lock + 1 x 2 SSH check + 4 keys + 1 play + 5 reserve = 32
        rc, stderr, launched = await asyncio.to_thread(
            run_late, runner, msg, late=10, deadline=32, SERVER_LOCK_TIMEOUT="20",
            SSH_ATTEMPTS="1", SSH_COMMAND_TIMEOUT="2", PLAY_TIMEOUT="1")
    finally:
        await holder.close()
    assert rc == 12, stderr
    await assert_reported_in_time(redis_client, runner, db, msg, launched, 32, claimed=False)
    row = await server_row(db, handle)
    assert row["status"] == "NEW" and row["last_request_id"] is None  # never claimed


@pytest.fixture(scope="module")
def host(provisioner_key: Keypair) -> Iterator[Host]:
    with vps_host(name_prefix="infra-deadline") as h:
        h.authorize_key(provisioner_key.public)
        yield h


@pytest.mark.hosts
async def test_slow_play(runner: Runner, host: Host, redis_client: aioredis.Redis, db) -> None:
    handle = unique_handle("dl-play")
    runner.register(handle, host.address, host.ssh_port)
    msg = message(handle)
    # 1 lock + (3 x 3 + 0.3 x 3) SSH check + 6 keys + 20 play + 5 reserve = 41.9
    # Started 21 s late, at most about 16 s are left for the play: less than PLAY_TIMEOUT.
    rc, stderr, launched = run_late(
        runner, msg, late=21, deadline=42, SERVER_LOCK_TIMEOUT="1", SSH_COMMAND_TIMEOUT="3",
        PLAY_TIMEOUT="20", SETUP_PLAYBOOK="playbooks/slow.yml",
        PLAY_VARS=json.dumps({"slow_seconds": 120}))
    assert rc == 12, stderr
    result = await assert_reported_in_time(redis_client, runner, db, msg, launched, 42)
    logs = parse_logs(stderr)
    if any(e["event"] == "play starting" for e in logs):  # (a very slow machine may not get there)
        assert result["error"]["message"].startswith("slow.yml did not finish")


async def test_settings_that_cannot_fit_are_refused_naming_them(
        runner: Runner, redis_client: aioredis.Redis, db) -> None:
    handle = unique_handle("dl-fit")
    runner.register(handle, "127.0.0.1", free_port())
    msg = message(handle)
    res = runner.run(msg, JOB_ACTIVE_DEADLINE_SECONDS="91", PLAY_TIMEOUT="1500")
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "rejected" and result["error"]["kind"] == "config_error"
    text = result["error"]["message"]
    assert "JOB_ACTIVE_DEADLINE_SECONDS=91s" in text and "PLAY_TIMEOUT (1500s)" in text
    assert (await server_row(db, handle))["status"] == "NEW"  # nothing touched
    assert not res.events("run started")


# -- JOB_DEADLINE_AT: Kubernetes' deadline, handed to the pod by the dispatcher -------------

@pytest.mark.unit
@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-07T03:00:00Z", datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)),
    ("2026-12-07T03:00:00.5z", datetime(2026, 12, 7, 3, 0, 0, 500_000, tzinfo=UTC)),
    ("2026-12-07T04:00:00+01:00", datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)),
    (" 2026-12-07T03:00:00Z\n", datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)),
    (None, None),
    ("", None),
])
def test_deadline_at_parses_rfc3339(value: str | None, expected: datetime | None) -> None:
    assert parse_deadline_at(value) == expected


@pytest.mark.unit
@pytest.mark.parametrize("value", ["soon", "2026-12-07", "2026-12-07T03:00:00",
                                   "1765076400", "2026-13-07T03:00:00Z"])
def test_deadline_at_that_is_not_a_zoned_time_is_refused(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (any ValueError: the caller logs it)
        parse_deadline_at(value)


def _iso(seconds_from_now: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds_from_now, UTC).isoformat()


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if this process had just started (pytest's own may be minutes old)."""
    monkeypatch.setattr("runner_image.deadline.process_age", lambda: 0.0)


@pytest.mark.unit
def test_an_earlier_kubernetes_deadline_wins(caplog: pytest.LogCaptureFixture,
                                             fresh_process: None) -> None:
    """A pod whose image took 40 s to pull: Kubernetes' deadline is 40 s earlier than this
    process's start + JOB_ACTIVE_DEADLINE_SECONDS, and it is the run's deadline."""
    with caplog.at_level(logging.WARNING, logger="runner_image.deadline"):
        deadline = RunDeadline.start(100, 5, _iso(60))
    assert deadline.at is not None
    left = deadline.at - time.monotonic()
    assert 58 < left < 60.5, left
    assert deadline.left() == pytest.approx(left - 5, abs=0.5)
    assert "the Job's start" in deadline.counted_from
    message = deadline.exhausted("the SSH check")
    assert "JOB_ACTIVE_DEADLINE_SECONDS=100s from the Job's start" in message, message
    assert caplog.records == []


@pytest.mark.unit
def test_a_later_kubernetes_deadline_does_not_extend_the_run(fresh_process: None) -> None:
    """A dispatcher clock ahead of the node's: the process's own count is the bound."""
    deadline = RunDeadline.start(100, 5, _iso(500))
    assert deadline.at is not None
    assert deadline.at - time.monotonic() <= 100
    assert deadline.counted_from == "the pod's start"


@pytest.mark.unit
@pytest.mark.parametrize(("value", "logged"), [
    (None, "JOB_DEADLINE_AT is not set"),
    ("", "JOB_DEADLINE_AT is not set"),
    ("next tuesday", "JOB_DEADLINE_AT is not a time"),
    ("2026-12-07T03:00:00", "JOB_DEADLINE_AT is not a time"),
])
def test_missing_or_invalid_deadline_at_falls_back_to_the_process_start(
        value: str | None, logged: str, caplog: pytest.LogCaptureFixture,
        fresh_process: None) -> None:
    with caplog.at_level(logging.WARNING, logger="runner_image.deadline"):
        deadline = RunDeadline.start(100, 5, value)
    assert deadline.at is not None
    assert deadline.at == pytest.approx(time.monotonic() + 100, abs=0.5)
    assert deadline.counted_from == "the pod's start"
    assert [r.getMessage() for r in caplog.records if logged in r.getMessage()], caplog.text


@pytest.mark.unit
def test_no_job_deadline_means_no_deadline_whatever_deadline_at_says() -> None:
    deadline = RunDeadline.start(None, 5, _iso(10))
    assert deadline.at is None and deadline.left() == float("inf")


@pytest.mark.unit
def test_the_process_start_counts_from_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without JOB_DEADLINE_AT, a process 30 s old has 30 s less."""
    monkeypatch.setattr("runner_image.deadline.process_age", lambda: 30.0)
    deadline = RunDeadline.start(100, 5, "")
    assert deadline.at == pytest.approx(time.monotonic() + 70, abs=0.5)


@pytest.mark.parametrize(("value", "warned", "counted_from"), [
    ("not a time", "JOB_DEADLINE_AT is not a time", "the pod's start"),
    (None, "JOB_DEADLINE_AT is not set", "the pod's start"),
    ("2099-01-01T00:00:00Z", None, "the pod's start"),  # later: its own start is earlier
])
async def test_the_runner_runs_on_whatever_job_deadline_at_says(
        runner: Runner, redis_client: aioredis.Redis, value: str | None, warned: str | None,
        counted_from: str) -> None:
    """A missing, invalid or later JOB_DEADLINE_AT never breaks a run: it counts from its
    own start, says so once at warning level, and goes on to its ordinary end."""
    msg = message(unique_handle("dl-at"))  # unregistered: ends quickly as unknown_server
    overrides = {"JOB_ACTIVE_DEADLINE_SECONDS": "3600"}
    if value is not None:
        overrides["JOB_DEADLINE_AT"] = value
    res = runner.run(msg, **overrides)
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["error"]["kind"] == "unknown_server", result
    [started] = res.events("run started")
    assert started["deadline_from"] == counted_from, started
    warnings = [e for e in res.logs if e["level"] == "warning"
                and e["event"].startswith("JOB_DEADLINE_AT")]
    if warned is None:
        assert warnings == [], warnings
    else:
        assert [e["event"].split(";")[0] for e in warnings] == [warned], warnings
