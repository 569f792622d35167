"""Does the API accept Jobs built from the settings? A dry-run create, at start-up, every
DISPATCHER_PREFLIGHT_SECONDS, and whenever a create is refused: while the answer is no,
nothing is consumed (a bad setting must not dead-letter every message)."""

from __future__ import annotations

import asyncio
import logging

from dispatcher.executors.base import Executor

log = logging.getLogger("dispatcher")
REFUSED_PERIOD_SECONDS = 10.0  # while refused, check this often: notice the fix quickly


class JobConfigCheck:
    def __init__(self, executor: Executor, period_seconds: float) -> None:
        self.executor = executor
        self.period_seconds = period_seconds
        # Set while the API accepts Jobs built from the settings; intake consumes nothing
        # while it is clear.
        self.accepted = asyncio.Event()
        self.refusal: str | None = None

    async def check(self) -> bool:
        """True if the API accepts the settings' Job. Unanswered (API down): the last
        verdict stands, the API outage shows elsewhere."""
        try:
            refusal = await self.executor.preflight()
        except Exception as exc:  # unanswered (or a bug here): no verdict, never a crash
            log.warning("Job preflight (dry run) got no verdict; retried later",
                        extra={"error": str(exc)[:500], "error_type": type(exc).__name__})
            if self.refusal is None:
                self.accepted.set()  # no verdict yet: creates will tell
            return self.refusal is None
        if refusal is None:
            if self.refusal is not None:
                log.info("the API accepts Jobs built from the settings again: consuming")
            self.refusal = None
            self.accepted.set()
            return True
        if refusal != self.refusal:
            log.error("the Kubernetes API refuses Jobs built from the settings (dry run); "
                      "no message is consumed until the DISPATCHER_JOB_* settings (chart "
                      "values runner.*) are fixed", extra={"error": refusal})
        self.refusal = refusal
        self.accepted.clear()
        return False

    async def loop(self) -> None:
        while True:
            period = self.period_seconds
            if self.refusal is not None:
                period = min(period, REFUSED_PERIOD_SECONDS)
            await asyncio.sleep(period)
            await self.check()
