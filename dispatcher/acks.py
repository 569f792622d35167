"""Acking created Jobs' messages: the acks of concurrent launches share one round trip."""

from __future__ import annotations

import asyncio
import functools

from dispatcher.store.queue import QueueStore
from dispatcher.store.retry import RedisRetry


class Acks:
    def __init__(self, store: QueueStore, retry: RedisRetry) -> None:
        self.store = store
        self.retry = retry
        self._waiting: list[tuple[str, str, str, asyncio.Future[None]]] = []
        self._pending = asyncio.Event()

    async def ack(self, raw: str, handle: str, request_id: str) -> None:
        """Returns once the message is out of the processing list and its slot 'created'."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((raw, handle, request_id, done))
        self._pending.set()
        await done

    async def loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
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
