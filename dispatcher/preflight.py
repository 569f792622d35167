"""Does the API accept Jobs built from the settings, and their pods? A dry-run create of the
Job and of the pod the Job controller would make from it, at start-up, every
DISPATCHER_PREFLIGHT_SECONDS, whenever a create is refused, and at once when a runner pod
was refused at admission: while the answer is no, nothing is consumed or launched (a bad
setting, a namespace policy or a full quota must not fail every message); the messages stay
queued or claimed, nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dispatcher.executors.base import POD_REFUSAL_PREFIX, Executor

log = logging.getLogger("dispatcher")
REFUSED_PERIOD_SECONDS = 10.0  # while refused, check this often: notice the fix quickly


def _refusal_line(refusal: str) -> str:
    if refusal.startswith(POD_REFUSAL_PREFIX):
        return ("launches held: the Kubernetes API refuses the runner pods of Jobs built "
                "from the settings at admission (dry run of the pod); messages stay queued "
                "until the namespace's policy or quota, or the DISPATCHER_JOB_* settings "
                "(chart values runner.*), are fixed")
    return ("the Kubernetes API refuses Jobs built from the settings (dry run); no message "
            "is consumed until the DISPATCHER_JOB_* settings (chart values runner.*) are "
            "fixed")


class JobConfigCheck:
    def __init__(self, executor: Executor, period_seconds: float) -> None:
        self.executor = executor
        self.period_seconds = period_seconds
        # Set while the API accepts Jobs built from the settings; intake consumes nothing
        # while it is clear.
        self.accepted = asyncio.Event()
        self.refusal: str | None = None
        self._wake = asyncio.Event()
        executor.on_pod_rejected = self.hold

    def hold(self, refusal: str) -> None:
        """A runner pod was refused at admission: stop launching into the same refusal at
        once, and check again now (the dry run releases the hold if the pod passes)."""
        if self.refusal is None:
            log.error("launches held: a runner pod was refused at admission; checking "
                      "whether the runner pod built from the settings is refused too",
                      extra={"error": refusal[:1000]})
        self.refusal = refusal
        self.accepted.clear()
        self._wake.set()

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
            log.error(_refusal_line(refusal), extra={"error": refusal})
        self.refusal = refusal
        self.accepted.clear()
        return False

    async def loop(self) -> None:
        while True:
            period = self.period_seconds
            if self.refusal is not None:
                period = min(period, REFUSED_PERIOD_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
            self._wake.clear()
            await self.check()
