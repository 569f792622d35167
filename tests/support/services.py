"""Real Redis and PostgreSQL servers on 127.0.0.1, started for tests and the demo.

Each server runs from a throwaway directory on a free port and is stopped on exit.
If REDIS_TEST_URL / POSTGRES_TEST_DSN are set, those running servers are used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15")]


_ISSUED: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one this process was given before: the kernel
    hands the same free port out twice in a row often enough to give a dispatcher's health
    and metrics servers one port (seen on a loaded machine)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class RedisServer:
    port: int
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"]
        if password:
            # Through stdin-free config file so the password is not on a command line.
            conf = Path(workdir) / "redis.conf"
            conf.write_text(f"requirepass {password}\n")
            conf.chmod(0o600)
            args.insert(1, str(conf))
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(port)
            yield RedisServer(port, password)
        finally:
            proc.terminate()
            proc.wait(10)


@dataclass
class PostgresServer:
    port: int
    user: str = "postgres"
    password: str = "pg-test-password"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def ensure_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; returns its DSN."""
        async def create() -> None:
            conn = await asyncpg.connect(self.dsn(), password=self.password)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.dsn(name)


def _pg_bin() -> Path:
    for candidate in PG_BIN_CANDIDATES:
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster with password auth; run as 'postgres' when we are root."""
    pg_bin = _pg_bin()
    port = free_port()
    server = PostgresServer(port)
    run_as: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="pg-"))
    try:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        pwfile = workdir / "pwfile"
        pwfile.write_text(server.password + "\n")
        if run_as:
            shutil.chown(pwfile, "postgres")
        data = workdir / "data"
        subprocess.run(
            [*run_as, str(pg_bin / "initdb"), "-D", str(data), "-U", server.user,
             "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        pwfile.unlink()
        subprocess.run(
            [*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "-l", str(workdir / "log"),
             "-o", f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off",
             "start"],
            check=True, stdout=subprocess.DEVNULL,
        )
        try:
            yield server
        finally:
            subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
