"""Acking created Jobs' messages: the acks of concurrent launches share one round trip.

At most one round trip goes out per ``window`` seconds: an ack after a quiet spell goes at
once (an idle message is acked right after its create), while during a burst the acks of
the creates that end within the window share a round trip instead of taking one each,
which costs the dispatcher and Redis CPU per Job. A message waits that much longer in the
processing list; a crash meanwhile redelivers it, and its Job's create then answers 409 (an
existing Job of ours), as for any crash between a create and its ack.
"""

from __future__ import annotations

import asyncio
import functools

from dispatcher.store.queue import QueueStore
from dispatcher.store.retry import RedisRetry

# A burst at about 500 Jobs/s then acks about ten messages per round trip. A round trip
# through redis-py costs the event loop several times a create's own Python, so a shorter
# window shows in a burst's CPU per Job (scripts/bench_dispatcher.py); a longer one keeps
# launches, and the room they hold, waiting longer.
ACK_WINDOW_SECONDS = 0.025


class Acks:
    def __init__(self, store: QueueStore, retry: RedisRetry,
                 window: float = ACK_WINDOW_SECONDS) -> None:
        self.store = store
        self.retry = retry
        self.window = window
        self._waiting: list[tuple[str, str, str, asyncio.Future[None]]] = []
        self._pending = asyncio.Event()
        self._last_sent = float("-inf")  # loop time of the latest round trip's start

    async def ack(self, raw: str, handle: str, request_id: str) -> None:
        """Returns once the message is out of the processing list and its slot 'created'."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((raw, handle, request_id, done))
        self._pending.set()
        await done

    async def loop(self) -> None:
        clock = asyncio.get_running_loop().time
        while True:
            await self._pending.wait()
            early = self._last_sent + self.window - clock()
            if early > 0:
                await asyncio.sleep(early)  # within the window: the acks gather meanwhile
            self._pending.clear()
            self._last_sent = clock()
            batch, self._waiting = self._waiting, []
            items = [(r, h, i) for r, h, i, _ in batch]
            try:
                await self.retry(functools.partial(self.store.ack_many, items))
            except BaseException:
                # Kept for the restarted loop: the launches wait on these acks.
                self._waiting[:0] = batch
                self._pending.set()
                raise
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)
