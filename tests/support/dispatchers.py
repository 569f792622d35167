"""Dispatcher processes for one test: each started with the test's environment on top of a
base, logged to the test's directory, all killed when the test ends.

    with dispatchers(tmp_path, quick_env(redis_srv, instance="adm")) as start:
        first = start()                       # waits for /readyz
        second = start(ready=False, DISPATCHER_PREFLIGHT_SECONDS="1")
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.dispatch import DispatcherProcess
from tests.support.services import RedisServer

StartDispatcher = Callable[..., DispatcherProcess]


def quick_env(redis_srv: RedisServer, instance: str) -> dict[str, str]:
    """Redis, the release's instance label, and timings short enough for a test: a replica
    declared dead after seconds, reconciliation every second, API retries capped at 1 s."""
    return {"REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            "DISPATCHER_INSTANCE": instance,
            "DISPATCHER_HEARTBEAT_SECONDS": "0.5", "DISPATCHER_RECONCILE_SECONDS": "1",
            "DISPATCHER_API_RETRY_MAX_SECONDS": "1"}


@contextlib.contextmanager
def dispatchers(directory: Path, base_env: dict[str, str],
                ready_timeout: float = 60) -> Iterator[StartDispatcher]:
    started: list[DispatcherProcess] = []

    def start(ready: bool = True, **env: str) -> DispatcherProcess:
        process = DispatcherProcess({**base_env, **env},
                                    directory / f"dispatcher-{len(started)}.log").start()
        started.append(process)
        if ready:
            process.wait_ready(timeout=ready_timeout)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()
