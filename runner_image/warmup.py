"""Imports the run needs later, done in a thread while the run waits on the network.

Python imports hold the GIL: run beside the database round trips they delayed every reply
by up to a switch interval, so they start when the run begins its longest wait (the SSH
check, ~0.3 s spent in ssh and sshd, not in this process). What they load lives as long as
the process and is frozen out of the collector's sight afterwards (see cli.entrypoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import threading


class Warmup:
    """Modules imported in a background thread; ``wait()`` until they are loaded."""

    def __init__(self, *modules: str) -> None:
        self.modules = modules
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._load, name="warmup", daemon=True)
            self.thread.start()

    def _load(self) -> None:
        try:
            for name in self.modules:
                with contextlib.suppress(Exception):  # raised again where it is imported
                    importlib.import_module(name)
            gc.freeze()
        finally:
            self.done.set()

    async def wait(self) -> None:
        """Loaded (started here if it had not been); an import error surfaces on use."""
        self.start()
        if not self.done.is_set():
            await asyncio.to_thread(self.done.wait)
