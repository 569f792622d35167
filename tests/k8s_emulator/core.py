"""The emulator's parts wired together on one event loop (no threads, no processes here)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .api import Api, WatchSettings
from .control import Control
from .controller import AutoController, ControllerConfig
from .deadlines import DeadlineEnforcer
from .faults import Faults, Stats
from .httpserver import HttpServer
from .kinds import BY_PLURAL
from .registry import Registry
from .store import Store


class EmulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on (default 127.0.0.1)")
    port: int = Field(0, ge=0, le=65535, description="port; 0 picks a free one (default 0)")
    window: int = Field(1000, ge=1, description="watch events kept per resource (default 1000)")
    bookmark_interval: float = Field(5.0, gt=0, description="seconds between BOOKMARK events "
                                     "on watches that allow them (default 5)")
    default_watch_timeout: float | None = Field(
        None, gt=0, description="close watches without timeoutSeconds after this many seconds "
                                "(default: never)")
    gc_delay: float = Field(0.0, ge=0, description="seconds before the garbage collector "
                                                   "acts on a deletion (default 0)")
    seed: int | None = Field(None, description="seed for generated names (default random)")
    controller: ControllerConfig = Field(default_factory=ControllerConfig)


class EmulatorCore:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config.window)
        self.registry = Registry(self.store, self._defer, random.Random(config.seed))
        self.faults = Faults()
        self.stats = Stats()
        self.controller = AutoController(self.registry, config.controller)
        self.deadlines = DeadlineEnforcer(self.registry)
        self.watch = WatchSettings(config.bookmark_interval, config.default_watch_timeout)
        self.control = Control(self)
        self.api = Api(self.registry, self.faults, self.stats, self.watch, self.control)
        self.http = HttpServer(self.api, config.host, config.port)
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    def _defer(self, fn: Any) -> None:
        loop = asyncio.get_running_loop()
        if self.config.gc_delay:
            loop.call_later(self.config.gc_delay, fn)
        else:
            loop.call_soon(fn)

    async def start(self) -> None:
        await self.http.listen()

    async def stop(self) -> None:
        """Ends watch streams properly (as a terminating API server does), then closes."""
        self.controller.cancel()
        for table in self.store.tables.values():
            for watcher in list(table.watchers):
                watcher.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.api.streams_idle.wait(), 1.0)
        await self.http.stop_listening()

    # ---- operations shared by the in-process API and the control endpoints ----

    def reset(self) -> None:
        self.store.clear()
        self.registry.logs.clear()
        self.faults.clear()
        self.stats.clear()

    def compact(self) -> int:
        return self.store.compact()

    def configure(self, window: int | None = None, bookmark_interval: float | None = None,
                  default_watch_timeout: float | None = None,
                  gc_delay: float | None = None) -> None:
        if window is not None:
            self.store.window = window
            for table in self.store.tables.values():
                table.window = window
        if bookmark_interval is not None:
            self.watch.bookmark_interval = bookmark_interval
        if default_watch_timeout is not None:
            self.watch.default_timeout = default_watch_timeout or None
        if gc_delay is not None:
            self.config.gc_delay = gc_delay

    async def down(self, seconds: float | None = None) -> None:
        """Stops listening and resets open connections; back after `seconds` if given."""
        await self.http.stop_listening()
        if seconds:
            loop = asyncio.get_running_loop()
            loop.call_later(seconds, lambda: self.spawn(self.up()))

    async def up(self) -> None:
        await self.http.listen()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def objects(self, resource: str | None = None,
                namespace: str | None = None) -> dict[str, list[dict[str, Any]]]:
        plurals = [resource] if resource else list(BY_PLURAL)
        out: dict[str, list[dict[str, Any]]] = {}
        for plural in plurals:
            if plural not in BY_PLURAL:
                raise KeyError(plural)
            table = self.store.tables[plural]
            namespaces = [namespace] if namespace else sorted(table.objects)
            out[plural] = [table.objects[ns][name].full() for ns in namespaces
                           for name in table.sorted_names(ns) if ns in table.objects]
        return out
