"""Running the emulator: in a background thread of the test process, or as its own process.

    with running_emulator() as emu:          # thread; emu.inject(...), emu.down(), ...
        api = kubernetes.client.BatchV1Api(emu.api_client())

    with emulator_process() as proc:         # subprocess; proc.control is the HTTP control
        write_kubeconfig(path, proc.url)

`EmulatorControl` drives the `/_emulator/` endpoints over HTTP, for either mode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client

from .clientconfig import api_client, write_kubeconfig
from .controller import ControllerConfig
from .core import EmulatorConfig, EmulatorCore
from .faults import FaultRule

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


class Emulator:
    """The emulator on its own event loop in a daemon thread; methods are thread-safe."""

    def __init__(self, **config: Any) -> None:
        self.config = EmulatorConfig(**config)
        self.core: EmulatorCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> Emulator:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self.core = EmulatorCore(self.config)
                loop.run_until_complete(self.core.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="k8s-emulator", daemon=True)
        self._thread.start()
        started.result(timeout=10)
        return self

    async def _shutdown(self) -> None:
        assert self.core is not None
        await self.core.stop()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- running things on the emulator's loop ----

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs `fn(core, ...)` on the emulator loop and returns its result."""
        assert self._loop is not None and self.core is not None, "emulator not started"
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(self.core, *args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def _await(self, make: Callable[[EmulatorCore], Any]) -> Any:
        assert self._loop is not None and self.core is not None, "emulator not started"
        return asyncio.run_coroutine_threadsafe(make(self.core), self._loop).result(10)

    # ---- client side ----

    @property
    def url(self) -> str:
        assert self.core is not None, "emulator not started"
        return self.core.url

    @property
    def port(self) -> int:
        assert self.core is not None, "emulator not started"
        return self.core.http.port

    def api_client(self) -> kubernetes.client.ApiClient:
        return api_client(self.url)

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        return write_kubeconfig(path, self.url, namespace)

    # ---- control ----

    def inject(self, **rule: Any) -> FaultRule:
        """Adds a fault rule, e.g. inject(verb="create", resource="jobs", status=500)."""
        parsed = FaultRule(**rule)
        return self.call(lambda core: core.faults.add(parsed))

    def clear_faults(self) -> None:
        self.call(lambda core: core.faults.clear())

    def stats(self) -> dict[str, Any]:
        return self.call(lambda core: core.stats.snapshot())

    def request_count(self, verb: str | None = None, resource: str | None = None,
                      code: int | None = None) -> int:
        return self.call(lambda core: core.stats.count(verb, resource, code))

    def reset(self) -> None:
        self.call(lambda core: core.reset())

    def compact(self) -> int:
        """Forgets watch history: watching from any older resourceVersion now gets 410."""
        return self.call(lambda core: core.compact())

    def configure(self, **settings: Any) -> None:
        self.call(lambda core: core.configure(**settings))

    def configure_controller(self, **settings: Any) -> None:
        """Changes the given auto controller settings, e.g. mode="succeed"."""
        def apply(core: EmulatorCore) -> None:
            current = core.controller.config.model_dump()
            core.controller.configure(ControllerConfig(**{**current, **settings}))
        self.call(apply)

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None,
                append: bool = False) -> None:
        self.call(lambda core: core.registry.set_log(namespace, pod, text, container, append))

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda core: core.objects(resource, namespace))[resource]

    def get_object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        def get(core: EmulatorCore) -> dict[str, Any] | None:
            entry = core.store.tables[resource].get(namespace, name)
            return entry.full() if entry else None
        return self.call(get)

    def resource_version(self) -> int:
        return self.call(lambda core: core.store.rv)

    def down(self) -> None:
        """Stops listening (connections are refused) and resets open connections."""
        self._await(lambda core: core.down())

    def up(self) -> None:
        """Listens again on the same port."""
        self._await(lambda core: core.up())

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()


@contextlib.contextmanager
def running_emulator(**config: Any) -> Iterator[Emulator]:
    """An emulator in a background thread of this process, stopped on exit."""
    emulator = Emulator(**config)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


class EmulatorControl:
    """The `/_emulator/` control endpoints over plain HTTP."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith("http://"):
            raise ValueError(f"emulator URL must be http://..., got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, action: str, body: Any = None,
              query: str = "") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked in __init__)
            f"{self.url}/_emulator/{action}{query}", data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"emulator control {method} {action} failed with "
                               f"{exc.code}: {exc.read().decode()}") from None

    def inject(self, **rule: Any) -> dict[str, Any]:
        return self._call("POST", "faults", rule)[0]

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "faults")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def compact(self) -> int:
        return int(self._call("POST", "compact", {})["resourceVersion"])

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        query = f"?resource={resource}" + (f"&namespace={namespace}" if namespace else "")
        return self._call("GET", "objects", query=query)[resource]

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None,
                append: bool = False) -> None:
        self._call("POST", "logs", {"namespace": namespace, "pod": pod, "text": text,
                                    "container": container, "append": append})

    def down(self, seconds: float) -> None:
        """The server answers, then refuses connections for `seconds`."""
        self._call("POST", "down", {"seconds": seconds})

    def configure_controller(self, **settings: Any) -> dict[str, Any]:
        return self._call("POST", "controller", settings)

    def configure(self, **settings: Any) -> None:
        self._call("POST", "config", settings)


class EmulatorProcess:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.control = EmulatorControl(url)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api_client(self) -> kubernetes.client.ApiClient:
        return api_client(self.url)

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        return write_kubeconfig(path, self.url, namespace)

    def down(self, timeout: float = 10.0) -> None:
        """Stops listening until `up()` (SIGUSR1); returns once connections are refused."""
        self.proc.send_signal(signal.SIGUSR1)
        self._wait_listening(False, timeout)

    def up(self, timeout: float = 10.0) -> None:
        """Listens again on the same port (SIGUSR2); returns once it accepts connections."""
        self.proc.send_signal(signal.SIGUSR2)
        self._wait_listening(True, timeout)

    def _wait_listening(self, wanted: bool, timeout: float) -> None:
        address = urllib.parse.urlsplit(self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((address.hostname, address.port), timeout=1):
                    listening = True
            except OSError:
                listening = False
            if listening == wanted:
                return
            time.sleep(0.01)
        state = "listening" if wanted else "refusing connections"
        raise TimeoutError(f"k8s emulator (pid {self.pid}) not {state} after {timeout}s")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def emulator_process(port: int = 0, **options: Any) -> Iterator[EmulatorProcess]:
    """`python -m tests.k8s_emulator` as a child process; options are CLI flags
    (window=..., bookmark_interval=..., controller_mode=..., ...)."""
    args = [sys.executable, "-m", "tests.k8s_emulator", "--port", str(port)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http://"):
            proc.kill()
            raise RuntimeError(f"k8s emulator process did not start (printed {line!r}); "
                               "run `python -m tests.k8s_emulator` by hand to see why")
        handle = EmulatorProcess(proc, line)
        yield handle
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
