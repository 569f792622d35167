"""One deadline for the whole run, derived from the Job's ``activeDeadlineSeconds``.

Kubernetes kills the pod ``activeDeadlineSeconds`` after the Job started; a runner killed
that way reports nothing. So the run has a single deadline (the pod's start plus the Job's
deadline), every phase (lock wait, provider calls and task polling, the SSH wait after a
reinstall, the SSH check with its backoff, key installation, the plays) takes its timeout
from what is left of it, and ``REPORT_RESERVE_SECONDS`` is always kept back for writing
the server's status and the result.

The pod's start is the start of this process (PID 1's child under tini, started with the
container): read from ``/proc`` so the interpreter's own start-up counts as well.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


class DeadlineReached(Exception):
    """A phase found no time left before the reserve; ``phase`` names it."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.message = message


def process_age() -> float:
    """Seconds since this process started (0.0 where /proc cannot tell)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        start_ticks = int(fields[19])  # field 22 of stat, counted after "pid (comm)"
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass(frozen=True)
class RunDeadline:
    """``at`` is a ``time.monotonic()`` value, or None when the Job sets no deadline."""

    at: float | None
    reserve: float
    job_deadline_seconds: float | None

    @classmethod
    def start(cls, job_deadline_seconds: float | None, reserve: float) -> RunDeadline:
        if job_deadline_seconds is None:
            return cls(None, reserve, None)
        started = time.monotonic() - process_age()
        return cls(started + job_deadline_seconds, reserve, job_deadline_seconds)

    def left(self) -> float:
        """Seconds the run's phases may still use (the reserve already taken off)."""
        if self.at is None:
            return float("inf")
        return self.at - self.reserve - time.monotonic()

    def cap(self, seconds: float) -> float:
        """``seconds``, or what is left if that is less (never negative)."""
        return max(0.0, min(seconds, self.left()))

    def capped(self, seconds: float) -> bool:
        """True when the deadline, not ``seconds``, is the tighter bound."""
        return self.left() < seconds

    def require(self, phase: str, needed: float = 0.0) -> None:
        """Raise DeadlineReached unless more than ``needed`` seconds are left for ``phase``."""
        if self.left() <= needed:
            raise DeadlineReached(phase, self.exhausted(phase))

    def exhausted(self, phase: str) -> str:
        return (f"the run reached its deadline during {phase}: JOB_ACTIVE_DEADLINE_SECONDS="
                f"{self.job_deadline_seconds:g}s from the pod's start, less "
                f"REPORT_RESERVE_SECONDS={self.reserve:g}s kept to report")
