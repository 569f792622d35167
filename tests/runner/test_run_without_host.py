"""Runs that end before (or without) a working SSH host: unknown server, unreachable
addresses, rejected input and configuration, and reporting when Redis is away."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from contracts.results import ResultEntry
from tests.runner.conftest import (
    Runner,
    assert_logged_why,
    message,
    parse_logs,
    processes_mentioning,
    result_for,
    server_row,
    unique_handle,
)
from tests.runner.test_agent import fake_agent, late_listen_agent
from tests.support.services import free_port


def ts(line: dict) -> float:
    return datetime.fromisoformat(line["ts"]).timestamp()


async def test_unknown_server(runner: Runner, redis_client: aioredis.Redis,
                              tmp_path_factory: pytest.TempPathFactory) -> None:
    msg = message("no-such-server")
    # The run's ssh-agent starts while the lock is taken and the row read: a run that ends
    # there leaves neither the agent nor its scratch directory behind.
    scratch = tmp_path_factory.mktemp("us", numbered=True)
    res = runner.run(msg, RUNNER_SCRATCH_DIR=str(scratch))
    assert res.rc == 10, res.explain
    assert processes_mentioning(str(scratch)) == []
    assert os.listdir(scratch) == []
    assert not res.events("stopped processes the play left behind")  # stopped, not swept
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    ResultEntry.model_validate(result)
    assert result["status"] == "failed"
    assert result["error"]["kind"] == "unknown_server"
    assert "no-such-server" in result["error"]["message"]
    assert not res.events("ssh attempt failed") and not res.events("ssh check passed")


async def test_closed_port_is_unreachable_after_spaced_attempts(
        runner: Runner, redis_client: aioredis.Redis, db) -> None:
    handle = unique_handle("closed")
    runner.register(handle, "127.0.0.1", free_port())  # nothing listens there
    msg = message(handle)
    res = runner.run(msg, SSH_ATTEMPTS="3", SSH_BACKOFF_BASE="0.5")
    assert res.rc == 11, res.explain
    attempts = res.events("ssh attempt failed")
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    gaps = [ts(b) - ts(a) for a, b in itertools.pairwise(attempts)]
    # Exponential backoff: about 0.5 s, then about 1 s (plus the attempt's own time).
    assert 0.5 <= gaps[0] < 3.0, gaps
    assert 1.0 <= gaps[1] < 4.0, gaps
    assert gaps[1] > gaps[0]
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "unreachable"
    assert result["error"]["kind"] == "ssh_unreachable"
    assert "Connection refused" in result["error"]["message"]
    assert "after 3 attempts" in result["error"]["message"]
    row = await server_row(db, handle)
    assert row["status"] == "UNREACHABLE" and "Connection refused" in row["status_reason"]
    # ansible-playbook, started ahead and held at its gate, was stopped unreleased.
    assert [e["ansible_status"] for e in res.events("ansible status")] == [
        "starting", "running", "abandoned"]
    assert not res.events("play released") and not res.events("ansible event")
    assert processes_mentioning(runner.env["RUNNER_SCRATCH_DIR"]) == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections but never speaks SSH."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


async def test_open_port_without_ssh_is_unreachable(
        runner: Runner, redis_client: aioredis.Redis, silent_port: int) -> None:
    handle = unique_handle("silent")
    runner.register(handle, "127.0.0.1", silent_port)
    msg = message(handle)
    res = runner.run(msg, SSH_ATTEMPTS="2", SSH_CONNECT_TIMEOUT="1", SSH_BACKOFF_BASE="0.1")
    assert res.rc == 11, res.explain
    assert len(res.events("ssh attempt failed")) == 2
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "unreachable"
    text = result["error"]["message"]
    assert "timed out" in text or "no SSH answer" in text


async def test_sigterm_during_the_ssh_check_stops_the_waiting_play(
        runner: Runner, redis_client: aioredis.Redis, silent_port: int,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """ansible-playbook starts ahead of the SSH check and waits at its gate; a pod deleted
    during the check stops it unreleased; the result is the dispatcher's to publish."""
    handle = unique_handle("termcheck")
    runner.register(handle, "127.0.0.1", silent_port)
    msg = message(handle)
    scratch = tmp_path_factory.mktemp("tc", numbered=True)
    proc = runner.start(msg, RUNNER_SCRATCH_DIR=str(scratch), SSH_ATTEMPTS="1",
                        SSH_CONNECT_TIMEOUT="60", SSH_COMMAND_TIMEOUT="60")
    until = time.monotonic() + 60
    while not any("ansible-playbook" in p for p in processes_mentioning(str(scratch))):
        assert proc.poll() is None and time.monotonic() < until, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 15, stderr
    logs = parse_logs(stderr)
    statuses = [e["ansible_status"] for e in logs if e["event"] == "ansible status"]
    assert statuses == ["starting", "running", "abandoned"]
    assert not [e for e in logs if e["event"] in {"play released", "ansible event"}]
    assert await redis_client.lrange(runner.keys.results, 0, -1) == [], stderr
    assert processes_mentioning(str(scratch)) == [] and os.listdir(scratch) == []


async def test_invalid_message_is_rejected(runner: Runner, redis_client: aioredis.Redis) -> None:
    msg = message("srv-1", is_recovry=True)  # a typo must not run a full setup
    res = runner.run(msg)
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "rejected" and result["error"]["kind"] == "invalid_message"
    assert "is_recovry" in result["error"]["message"]
    assert_logged_why(res, result)


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("SSH_PRIVATE_KEY", None, "SSH_PRIVATE_KEY is not set"),
    ("DATABASE_URL", "postgresql://user:hunter2-db-secret@127.0.0.1/x",
     "DATABASE_URL is invalid"),
    ("SSH_ATTEMPTS", "0", "SSH_ATTEMPTS is invalid"),
    ("RUNNER_SCRATCH_DIR", "/tmp/" + "x" * 60, "RUNNER_SCRATCH_DIR is invalid"),
    # Not JSON: once a 56-line traceback and exit 1.
    ("PLAY_VARS", '{"api_token": "hunter2-db-secret"', "PLAY_VARS is invalid"),
    ("PLAY_VARS", '["hunter2-db-secret"]', "PLAY_VARS is invalid"),
    ("PLAY_VARS", '{"ssh_port": "hunter2-db-secret"}', "PLAY_VARS is invalid: ssh_port"),
    ("REPORT_RESERVE_SECONDS", "hunter2-db-secret", "REPORT_RESERVE_SECONDS is invalid"),
    ("JOB_ACTIVE_DEADLINE_SECONDS", "-5", "JOB_ACTIVE_DEADLINE_SECONDS is invalid"),
])
async def test_bad_setting_is_named_without_its_value(
        runner: Runner, redis_client: aioredis.Redis, variable: str, value: str | None,
        expected: str) -> None:
    msg = message("srv-1")
    env = runner.environment(msg)
    env.pop(variable, None)
    if value is not None:
        env[variable] = value
    res = runner.run_env(env)
    assert res.rc == 13, res.explain
    assert expected in res.stderr
    assert "hunter2-db-secret" not in res.stderr
    assert "Traceback" not in res.stderr  # every line is a JSON log line (parse_logs)
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "rejected" and result["error"]["kind"] == "config_error"
    assert expected in result["error"]["message"]
    assert "hunter2-db-secret" not in json.dumps(result)
    assert_logged_why(res, result)


@pytest.mark.parametrize(("key", "expected"), [
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGu3 one\nssh-ed25519 AAAA two", "exactly one line"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unknown key type"),
    ('command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGu3', "options"),
    ("ssh-ed25519 not*base64!", "not valid base64"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGu3dDw8NWrw6XYeUsvnqynze1mkSQCMaug3uv3wfE4W",
     "does not match"),
    ("-----BEGIN OPENSSH " "PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----",
     "private key"),
    # Seen installed with "succeeded" before keys were decoded: a 20-character truncated
    # body, an ed25519 key of 31 bytes, a 20 KB body.
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "not a valid ssh-ed25519"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAHwEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
     "not a valid ssh-ed25519"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB"
     + "A" * 20000, "too long"),
])
async def test_bad_deploy_key_is_rejected_before_touching_the_server(
        runner: Runner, redis_client: aioredis.Redis, db, key: str, expected: str) -> None:
    handle = unique_handle("badkey")
    runner.register(handle, "127.0.0.1", free_port())
    msg = message(handle)
    res = runner.run(msg, ORCHESTRATOR_SSH_PUBLIC_KEY=key)
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "rejected" and expected in result["error"]["message"]
    assert "ORCHESTRATOR_SSH_PUBLIC_KEY" in result["error"]["message"]
    assert_logged_why(res, result)
    row = await server_row(db, handle)
    assert row["status"] == "NEW" and row["last_request_id"] is None  # untouched


async def test_missing_playbook_is_a_configuration_error(
        runner: Runner, redis_client: aioredis.Redis, db) -> None:
    handle = unique_handle("noplay")
    runner.register(handle, "127.0.0.1", free_port())
    msg = message(handle)
    res = runner.run(msg, SETUP_PLAYBOOK="playbooks/nope.yml")
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["error"]["kind"] == "config_error" and "nope.yml" in result["error"]["message"]
    assert_logged_why(res, result)
    assert (await server_row(db, handle))["status"] == "NEW"


async def test_missing_mitogen_is_a_configuration_error(
        runner: Runner, redis_client: aioredis.Redis, db, tmp_path) -> None:
    # A package of the same name that fails to import stands in for a broken install.
    (tmp_path / "ansible_mitogen").mkdir()
    (tmp_path / "ansible_mitogen" / "__init__.py").write_text(
        "raise ImportError('ansible_mitogen is broken here')\n")
    handle = unique_handle("nomitogen")
    runner.register(handle, "127.0.0.1", free_port())
    msg = message(handle)
    pythonpath = f"{tmp_path}:{runner.env['PYTHONPATH']}"
    res = runner.run(msg, PYTHONPATH=pythonpath)
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["error"]["kind"] == "config_error"
    assert "PLAY_MITOGEN=false" in result["error"]["message"]
    assert_logged_why(res, result)
    assert not res.events("ssh attempt failed")  # stopped before touching the server
    assert (await server_row(db, handle))["status"] == "NEW"
    # The same run with Ansible's own strategy gets past the check (to the closed port).
    res = runner.run(message(handle), PYTHONPATH=pythonpath, PLAY_MITOGEN="false",
                     SSH_ATTEMPTS="1")
    assert res.rc == 11, res.explain


def test_report_retries_until_redis_is_back(runner: Runner) -> None:
    """Redis comes up on the configured port while the runner is retrying its publish."""
    port = free_port()
    msg = message("no-such-server")
    proc = runner.start(msg, REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PASSWORD="",
                        REPORT_ATTEMPTS="10", REPORT_BACKOFF_BASE="0.3")
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the runner is retrying
        seen.append(line)
        if "result publish failed, retrying" in line:
            break
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, rest = proc.communicate(timeout=60)
        stderr = "".join(seen) + rest
        assert proc.returncode == 10, stderr  # the run's own outcome: unknown server
        assert "result publish failed, retrying" in stderr
        client = sync_redis.Redis(port=port)
        entries = [json.loads(e) for e in client.lrange("provisioner:results", 0, -1)]
        assert [e["request_id"] for e in entries] == [msg["request_id"]]
        client.close()
    finally:
        server.terminate()
        server.wait(10)


async def test_could_not_report_exits_non_zero(runner: Runner) -> None:
    msg = message("no-such-server")
    res = runner.run(msg, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_PASSWORD="",
                     REPORT_ATTEMPTS="2", REPORT_BACKOFF_BASE="0.1")
    assert res.rc == 14, res.explain
    assert res.events("could not publish the result")


async def test_database_unavailable_is_reported(runner: Runner,
                                                redis_client: aioredis.Redis) -> None:
    msg = message("srv-1")
    res = runner.run(msg, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                     REPORT_ATTEMPTS="2", REPORT_BACKOFF_BASE="0.1")
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["error"]["kind"] == "database_unavailable"
    assert "DATABASE_URL" in result["error"]["message"]
    assert_logged_why(res, result)


@pytest.mark.parametrize(("env", "expected"), [
    ({"CREDENTIALS_KEY": "not-the-key"}, "cannot be decrypted with CREDENTIALS_KEY"),
    ({"CREDENTIALS_KEY": None}, "CREDENTIALS_KEY is not set"),
    ({"SSH_PRIVATE_KEY": "-----BEGIN OPENSSH " "PRIVATE KEY-----\ngarbage\n"
                         "-----END OPENSSH PRIVATE KEY-----\n"}, "SSH_PRIVATE_KEY could not be"),
    ({"RUNNER_SCRATCH_DIR": "/nonexistent/scratch"}, "RUNNER_SCRATCH_DIR is not a writable"),
], ids=["wrong-credentials-key", "no-credentials-key", "unusable-private-key", "no-scratch"])
async def test_unusable_credentials_are_rejected_before_touching_the_server(
        runner: Runner, redis_client: aioredis.Redis, db, env: dict[str, str | None],
        expected: str) -> None:
    handle = unique_handle("cred")
    runner.register(handle, "127.0.0.1", free_port(), password="some-root-password")
    msg = message(handle)
    full = runner.environment(msg)
    for name, value in env.items():
        full.pop(name, None)
        if value is not None:
            full[name] = value
    res = runner.run_env(full)
    assert res.rc == 13, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "rejected" and expected in result["error"]["message"]
    assert "some-root-password" not in res.stderr + json.dumps(result)
    assert_logged_why(res, result)
    row = await server_row(db, handle)
    assert row["status"] == "NEW" and row["last_request_id"] is None


async def test_an_ssh_agent_that_listens_late_is_not_a_configuration_error(
        runner: Runner, redis_client: aioredis.Redis, tmp_path) -> None:
    """The CI failure of a fresh clone: on a busy machine ssh-agent's socket file existed
    before it listened, ssh-add was refused, and a valid key was reported as config_error
    in 0.1 s. With listen() delayed the run now gets past the agent (to the closed port)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    late_listen_agent(bin_dir)
    handle = unique_handle("lateagent")
    runner.register(handle, "127.0.0.1", free_port())
    msg = message(handle)
    res = runner.run(msg, PATH=f"{bin_dir}:{runner.env['PATH']}", SSH_ATTEMPTS="1")
    assert res.rc == 11, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["error"]["kind"] == "ssh_unreachable", res.explain


async def test_an_ssh_agent_that_cannot_start_is_the_pods_environment(
        runner: Runner, redis_client: aioredis.Redis, db, tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_agent(bin_dir, 'echo "ssh-agent: cannot allocate memory" >&2; exit 1')
    handle = unique_handle("noagent")
    runner.register(handle, "127.0.0.1", free_port())
    msg = message(handle)
    res = runner.run(msg, PATH=f"{bin_dir}:{runner.env['PATH']}")
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert (result["status"], result["error"]["kind"]) == ("failed", "runner_environment")
    assert "cannot allocate memory" in result["error"]["message"]
    assert "retry" in result["error"]["message"]
    assert_logged_why(res, result)
    row = await server_row(db, handle)
    assert row["status"] == "NEW" and row["last_request_id"] is None  # untouched
