"""Running the dispatcher as a real process for tests, and waiting on Redis state."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.support.result_schema import assert_published_shape
from tests.support.services import free_port

REPO = Path(__file__).resolve().parents[2]


class DispatcherProcess:
    """``python -m dispatcher run`` with a given environment; logs captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, replica: str = "r1") -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "DISPATCHER_REPLICA_ID": replica,
                    "DISPATCHER_HEALTH_PORT": str(self.health_port),
                    "DISPATCHER_METRICS_PORT": str(self.metrics_port),
                    "DISPATCHER_BIND_ADDRESS": "127.0.0.1",
                    # Queue gauges follow Redis within a fraction of a second in tests.
                    "DISPATCHER_METRICS_REFRESH_SECONDS": "0.2", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DispatcherProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "run"], cwd=REPO,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, self.logs()[-3000:]
            if self.http(self.health_port, "/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"dispatcher not ready: {self.http(self.health_port, '/readyz')}")

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def metrics(self) -> str:
        return self.http(self.metrics_port, "/metrics")[1]

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


def metric_value(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (labels if labels else " ")) or \
                (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = 30,
                     interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def results(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [assert_published_shape(r) for r in await redis.lrange(keys.results, 0, -1)]


def message(handle: str, rid: str | None = None, **flags: bool) -> str:
    body: dict[str, Any] = {"server_handle": handle, **flags}
    if rid:
        body["request_id"] = rid
    return json.dumps(body)


def fake_runs(run_log: Path) -> list[dict[str, Any]]:
    """The fake runner's start/end records (tests/support/fake_runner.py), oldest first."""
    return [json.loads(line) for line in run_log.read_text().splitlines()] \
        if run_log.exists() else []
