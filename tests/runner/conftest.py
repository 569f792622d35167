"""Fixtures for runner tests: a migrated database, SSH key pairs, and the runner driven as a
subprocess with the environment the dispatcher gives it (the real interface)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.support.keys import Keypair, make_keypair
from tests.support.provider_api import ProviderApi, provider_api
from tests.support.result_schema import assert_published_shape
from tests.support.services import PostgresServer, RedisServer

REPO = Path(__file__).resolve().parents[2]
PLAYS = Path(__file__).resolve().parent / "plays"
CREDENTIALS_KEY = "credentials-key-for-tests-7f3a"
DB_NAME = "runner_tests"


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def provisioner_key(keys_dir: Path) -> Keypair:
    return make_keypair(keys_dir, "provisioner")


@pytest.fixture(scope="session")
def orchestrator_key(keys_dir: Path) -> Keypair:
    return make_keypair(keys_dir, "orchestrator")


@pytest.fixture(scope="session")
def scratch_root() -> Iterator[Path]:
    # Short on purpose: SSH control sockets live below it.
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class RunnerDb:
    server: PostgresServer

    @property
    def url(self) -> str:
        return self.server.dsn(DB_NAME)

    @property
    def password(self) -> str:
        return self.server.password

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, password=self.password)


def db_env(runner_db: RunnerDb) -> dict[str, str]:
    return {"DATABASE_URL": runner_db.url, "DATABASE_PASSWORD": runner_db.password,
            "CREDENTIALS_KEY": CREDENTIALS_KEY}


def base_process_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "CONTAINERS_CONF")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = str(REPO)
    # A directory that does not exist: the runner skips the write (tests of the message
    # pass their own path).
    env["TERMINATION_MESSAGE_PATH"] = str(Path(tempfile.gettempdir()) / "no-such-dir" / "t")
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner_image", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def runner_db(pg_srv: PostgresServer) -> RunnerDb:
    pg_srv.ensure_database(DB_NAME)
    db = RunnerDb(pg_srv)
    done = run_cli(["migrate"], {**base_process_env(), **db_env(db)})
    assert done.returncode == 0, done.stderr
    return db


@pytest.fixture
async def db(runner_db: RunnerDb) -> AsyncIterator[asyncpg.Connection]:
    conn = await runner_db.connect()
    try:
        yield conn
    finally:
        await conn.close()


@dataclass
class RunResult:
    rc: int
    stderr: str
    logs: list[dict[str, Any]] = field(default_factory=list)
    # What the run left behind (its published results and the server's row), read when a
    # failing assertion asks for ``explain``.
    state: Callable[[], str] = lambda: ""

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == name]

    @property
    def explain(self) -> str:
        """The assertion message of a check on this run: its log, then what it published
        and the server's row, so that a failure in CI says why without a rerun."""
        return f"exit code {self.rc}\n--- runner log\n{self.stderr}\n{self.state()}"


def assert_logged_why(res: RunResult, result: dict[str, Any]) -> None:
    """The run's last log line names the published error, masked the same way."""
    finished = res.events("run finished")
    assert len(finished) == 1, res.explain
    assert finished[0]["error_kind"] == result["error"]["kind"], res.explain
    assert finished[0]["error"] == result["error"]["message"], res.explain


def parse_logs(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for raw in stderr.splitlines():
        if raw.strip():
            lines.append(json.loads(raw))  # every line must be JSON
    return lines


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a run's scratch dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def message(handle: str, **flags: Any) -> dict[str, Any]:
    return {"server_handle": handle, "request_id": f"req-{uuid.uuid4().hex[:12]}",
            "enqueued_at": "2026-01-01T00:00:00+00:00", **flags}


@dataclass
class Runner:
    """Starts ``python -m runner_image`` the way the dispatcher's Job does."""

    env: dict[str, str]
    keys: Keys

    def environment(self, msg: dict[str, Any] | None, **overrides: str) -> dict[str, str]:
        env = dict(self.env)
        if msg is not None:
            env["PROVISIONER_MESSAGE"] = json.dumps(msg)
            env["JOB_NAME"] = f"provision-{msg['server_handle']}-{msg['request_id'][-8:]}"
        env.update(overrides)
        return {k: v for k, v in env.items() if v is not None}

    def start(self, msg: dict[str, Any], **overrides: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "runner_image"],
                                env=self.environment(msg, **overrides), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, msg: dict[str, Any], timeout: float = 180, **overrides: str) -> RunResult:
        return self._wait(self.start(msg, **overrides), timeout, msg)

    def run_env(self, env: dict[str, str], timeout: float = 180) -> RunResult:
        """Run with exactly ``env`` (to test missing variables)."""
        proc = subprocess.Popen([sys.executable, "-m", "runner_image"], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        msg = json.loads(env["PROVISIONER_MESSAGE"]) if "PROVISIONER_MESSAGE" in env else None
        return self._wait(proc, timeout, msg)

    def _wait(self, proc: subprocess.Popen[str], timeout: float,
              msg: dict[str, Any] | None) -> RunResult:
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            raise AssertionError(f"runner did not finish in {timeout}s:\n{stderr}\n"
                                 f"{self.state_of(msg)}") from None
        try:
            logs = parse_logs(stderr)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"the runner wrote a line that is not JSON ({exc}):\n"
                                 f"{stderr}") from None
        return RunResult(proc.returncode, stderr, logs, lambda: self.state_of(msg))

    def state_of(self, msg: dict[str, Any] | None) -> str:
        """The results published for ``msg``'s request and its server's row, as text."""
        if msg is None:
            return "(no message: no result or row to show)"
        client = sync_redis.Redis.from_url(self.env["REDIS_URL"],
                                           password=self.env.get("REDIS_PASSWORD") or None)
        try:
            entries = [json.loads(e) for e in client.lrange(self.keys.results, 0, -1)]
            mine = [e for e in entries if e.get("request_id") == msg.get("request_id")]
        except Exception as exc:  # the explanation must not hide the failure it explains
            mine = [f"(results unreadable: {exc})"]
        finally:
            client.close()
        return (f"--- published results for {msg.get('request_id')}\n"
                f"{json.dumps(mine, indent=1)}\n--- servers row of "
                f"{msg.get('server_handle')}\n{_read_row(self.env, msg.get('server_handle'))}")

    def register(self, handle: str, address: str, port: int, *, user: str = "root",
                 password: str | None = None, provider_server_id: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        args = ["register-server", "--handle", handle, "--address", address,
                "--port", str(port), "--user", user, *extra]
        if provider_server_id:
            args += ["--provider-server-id", provider_server_id]
        env = self.environment(None)
        if password is not None:
            env["SERVER_ROOT_PASSWORD"] = password
        done = run_cli(args, env)
        assert done.returncode == 0, done.stderr


def _read_row(env: dict[str, str], handle: object) -> str:
    """The server's row, read on a thread of its own (the test's loop may be running)."""
    async def read() -> str:
        conn = await asyncpg.connect(env["DATABASE_URL"], password=env["DATABASE_PASSWORD"])
        try:
            row = await conn.fetchrow(
                "SELECT handle, status, status_reason, last_request_id, ssh_port,"
                " last_run_started_at, last_run_finished_at FROM servers WHERE handle = $1",
                handle)
        finally:
            await conn.close()
        return json.dumps(dict(row), default=str) if row else "(no row)"

    box: list[str] = []

    def work() -> None:
        try:
            box.append(asyncio.run(read()))
        except Exception as exc:
            box.append(f"(row unreadable: {exc})")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    return box[0] if box else "(row read timed out)"


@pytest.fixture(scope="session")
def provider() -> Iterator[ProviderApi]:
    with provider_api() as api:
        yield api


@pytest.fixture
def runner(runner_db: RunnerDb, redis_srv: RedisServer, provisioner_key: Keypair,
           orchestrator_key: Keypair, scratch_root: Path, provider: ProviderApi,
           redis_client: aioredis.Redis) -> Runner:
    """Depends on redis_client so every test starts with an empty Redis."""
    provider.reset()
    return Runner(runner_environment(runner_db, redis_srv, provisioner_key, orchestrator_key,
                                     scratch_root, provider), Keys())


def runner_environment(runner_db: RunnerDb, redis_srv: RedisServer, provisioner_key: Keypair,
                       orchestrator_key: Keypair, scratch_root: Path, provider: ProviderApi
                       ) -> dict[str, str]:
    """The environment the dispatcher's Job gives the runner, for the test services."""
    return {
        **base_process_env(),
        **db_env(runner_db),
        "REDIS_URL": redis_srv.url,
        "REDIS_PASSWORD": redis_srv.password or "",
        "SSH_PRIVATE_KEY": provisioner_key.private,
        "ORCHESTRATOR_SSH_PUBLIC_KEY": orchestrator_key.public,
        "PLAY_PROJECT_DIR": str(PLAYS),
        "SETUP_PLAYBOOK": "playbooks/quick_setup.yml",
        "RECOVERY_PLAYBOOKS": "playbooks/recovery_one.yml,playbooks/recovery_two.yml",
        "SSH_BACKOFF_BASE": "0.3",
        "SSH_CONNECT_TIMEOUT": "3",
        "SSH_COMMAND_TIMEOUT": "20",
        "PLAY_TIMEOUT": "120",
        "RUNNER_SCRATCH_DIR": str(scratch_root),
        "REPORT_BACKOFF_BASE": "0.2",
        "PROVIDER_API_URL": provider.url,
        "PROVIDER_API_USERNAME": provider.behaviour.username,
        "PROVIDER_API_PASSWORD": provider.behaviour.password,
        "PROVIDER_POLL_INTERVAL": "0.2",
        "PROVIDER_REQUEST_TIMEOUT": "2",
        "REINSTALL_SSH_TIMEOUT": "60",
    }


async def result_for(redis: aioredis.Redis, keys: Keys, request_id: str) -> dict[str, Any]:
    """The one result entry of ``request_id`` (fails if there is not exactly one)."""
    entries = [json.loads(e) for e in await redis.lrange(keys.results, 0, -1)]
    mine = [e for e in entries if e.get("request_id") == request_id]
    assert len(mine) == 1, f"expected one result for {request_id}, got {entries}"
    return assert_published_shape(mine[0])


async def server_row(db: asyncpg.Connection, handle: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM servers WHERE handle = $1", handle)
    assert row is not None
    return dict(row)


def unique_handle(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
