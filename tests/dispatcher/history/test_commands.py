"""``python -m dispatcher history`` and ``show-run`` as an SRE runs them (a process, the
dispatcher's login role on real PostgreSQL): a readable table newest first, JSON for
scripts, one run in full; every failure one line with a non-zero exit code, no traceback,
no password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from tests.dispatcher.history.conftest import LOGIN_PASSWORD, HistoryDb, add_server
from tests.support.services import free_port

REPO = Path(__file__).resolve().parents[3]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for name in ("DATABASE_URL", "DATABASE_PASSWORD"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], env=full_env,
                          capture_output=True, text=True, timeout=60, check=False)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


async def two_runs(admin: asyncpg.Connection) -> tuple[str, str, str]:
    """A server with an older successful run and a newer failed one."""
    handle = await add_server(admin)
    now = datetime.now(UTC)
    await admin.execute(
        "INSERT INTO runs (request_id, server_handle, action, job_name, queued_at,"
        " started_at, finished_at, phases, status, reported_by, ok_count, changed_count,"
        " ssh_port_before, ssh_port_after) VALUES ($1, $2, 'setup', $3, $4, $5, $6,"
        " '{\"lock\": 0.02, \"ssh_check\": 1.5, \"keys\": 0.4, \"play\": 61.2,"
        " \"report\": 0.05}', 'succeeded', 'runner', 41, 17, 22, 2222)",
        f"old-{handle}", handle, f"prov-{handle}-old", now - timedelta(days=2),
        now - timedelta(days=2) + timedelta(seconds=3),
        now - timedelta(days=2) + timedelta(seconds=70))
    await admin.execute(
        "INSERT INTO runs (request_id, server_handle, action, job_name, queued_at,"
        " started_at, finished_at, phases, status, error_kind, reported_by, failed_task,"
        " failed_host, message, ok_count, changed_count, ssh_port_before, ssh_port_after)"
        " VALUES ($1, $2, 'recovery', $3, $4, $5, $6, '{\"play\": 9.0}', 'failed',"
        " 'play_failed', 'runner', 'docker : install packages', $2, 'apt failed', 3, 1,"
        " 2222, 2222)",
        f"new-{handle}", handle, f"prov-{handle}-new", now - timedelta(hours=1),
        now - timedelta(hours=1) + timedelta(seconds=2),
        now - timedelta(hours=1) + timedelta(seconds=20))
    return handle, f"old-{handle}", f"new-{handle}"


async def test_history_table_newest_first_and_json(history_db: HistoryDb,
                                                   admin: asyncpg.Connection) -> None:
    handle, old, new = await two_runs(admin)
    done = cli(history_db.env(), "history", handle)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["QUEUED", "(UTC)", "ACTION", "STATUS", "KIND", "TOOK",
                                "REQUEST"]
    assert new in lines[1] and "recovery" in lines[1] and "play_failed" in lines[1]
    assert lines[2].strip() == f"failed task: docker : install packages on {handle}"
    assert old in lines[3] and "succeeded" in lines[3] and "67.0s" in lines[3]

    done = cli(history_db.env(), "history", handle, "--json", "-n", "1")
    assert done.returncode == 0, done.stderr
    [run] = json.loads(done.stdout)
    assert run["request_id"] == new and run["status"] == "failed"
    assert run["failed_task"] == "docker : install packages"
    assert run["duration_seconds"] == 18.0


async def test_show_run_in_full(history_db: HistoryDb, admin: asyncpg.Connection) -> None:
    _, old, _ = await two_runs(admin)
    done = cli(history_db.env(), "show-run", old)
    assert done.returncode == 0, done.stderr
    fields = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip()
              for line in done.stdout.splitlines()}
    assert fields["status"] == "succeeded"
    assert fields["phases"] == "lock 0.0s, ssh_check 1.5s, keys 0.4s, play 61.2s, report 0.1s"
    assert fields["changed / ok"] == "17 / 41" and fields["ssh port"] == "22 -> 2222"
    done = cli(history_db.env(), "show-run", old, "--json")
    assert json.loads(done.stdout)["phases"]["play"] == 61.2


async def test_a_known_server_without_runs_is_not_an_error(
        history_db: HistoryDb, admin: asyncpg.Connection) -> None:
    handle = await add_server(admin)
    done = cli(history_db.env(), "history", handle)
    assert done.returncode == 0 and done.stdout.startswith(f"no runs recorded for {handle}")
    assert json.loads(cli(history_db.env(), "history", handle, "--json").stdout) == []


def test_unknown_server_and_request_are_one_line(history_db: HistoryDb) -> None:
    done = cli(history_db.env(), "history", "no-such-server")
    assert done.returncode == 4
    assert one_line(done.stderr).startswith("unknown server 'no-such-server'")
    done = cli(history_db.env(), "show-run", "no-such-request")
    assert done.returncode == 4
    assert one_line(done.stderr).startswith("no run recorded with request id")


def test_unreachable_database_is_one_line_without_the_password() -> None:
    url = f"postgresql://dispatcher:in-url-pw-7d1@127.0.0.1:{free_port()}/infra"
    done = cli({"DATABASE_URL": url, "DATABASE_PASSWORD": LOGIN_PASSWORD},
               "history", "web-7")
    assert done.returncode == 3
    line = one_line(done.stderr)
    assert line.startswith(f"cannot reach PostgreSQL at postgresql://dispatcher:***@"
                           f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/infra: "), line
    assert "check DATABASE_URL, DATABASE_PASSWORD" in line
    assert "in-url-pw-7d1" not in done.stderr + done.stdout
    assert LOGIN_PASSWORD not in done.stderr + done.stdout


def test_history_off_is_one_line(history_db: HistoryDb) -> None:
    done = cli({}, "history", "web-7")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("the run history is off: DATABASE_URL is not set")
