"""The hand-off of watch deliveries from the watch threads to the event loop, coalesced.

Waking the event loop from another thread costs a write to its self-pipe, a wake-up and a
context switch of the loop's thread and a callback. During a burst a stream's reads hold one
event each, so one wake-up per delivery cost the dispatcher about as much as applying the
events. Here a delivery wakes the loop only when no wake-up is pending, and the consumer
lets ``window`` seconds of deliveries gather before it takes them: at most one wake-up per
window, whatever the rate. Events are applied up to that much later; nothing that follows
Jobs and pods counts in milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
WINDOW_SECONDS = 0.01


class Mailbox(Generic[T]):
    """Items put from any thread, taken in order on the event loop ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float = WINDOW_SECONDS
                 ) -> None:
        self._loop = loop
        self._window = window
        self._lock = threading.Lock()
        self._items: list[T] = []
        self._signalled = False  # a wake-up of the consumer is on its way or has come
        self._ready = asyncio.Event()

    def put(self, items: Iterable[T]) -> None:
        """Add ``items`` (any thread); wakes the consumer unless a wake-up is pending."""
        with self._lock:
            self._items.extend(items)
            if self._signalled:
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[T]:
        """Everything put so far, in order, once there is something (event loop only)."""
        await self._ready.wait()
        if self._window > 0:
            await asyncio.sleep(self._window)  # what comes meanwhile needs no wake-up
        with self._lock:
            items, self._items = self._items, []
            # Cleared together: the next put signals again, and its set() can only be
            # scheduled after this clear.
            self._signalled = False
            self._ready.clear()
        return items
