"""One deadline for the whole run, derived from the Job's ``activeDeadlineSeconds``.

Kubernetes fails the Job ``activeDeadlineSeconds`` after the Job's ``status.startTime``
(scheduling, image pull and container start included) and kills the pod; a runner killed
that way reports nothing. So the run has a single deadline, every phase (lock wait,
provider calls and task polling, the SSH wait after a reinstall, the SSH check with its
backoff, key installation, the plays) takes its timeout from what is left of it, and
``REPORT_RESERVE_SECONDS`` is always kept back for writing the server's status and the
result.

The deadline is the earlier of two instants:

- ``JOB_DEADLINE_AT``: the moment Kubernetes' deadline runs out, an RFC 3339 UTC time the
  dispatcher computes when it creates the Job (its creation time, whole seconds, plus
  ``activeDeadlineSeconds``: the Job's startTime is never earlier than its creation) and
  hands the pod through the downward API (annotation ``infra-service.io/deadline-at``).
  The runner has no API access, so this is how it learns when the Job started counting.
- the start of this process plus ``JOB_ACTIVE_DEADLINE_SECONDS``: read from ``/proc`` so
  the interpreter's own start-up counts; the fallback when ``JOB_DEADLINE_AT`` is missing
  or not a time (a warning is logged, the run goes on).

The wall clock is read once, at start; everything after is ``time.monotonic()``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)


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


def parse_deadline_at(value: str | None) -> datetime | None:
    """``JOB_DEADLINE_AT`` as an aware UTC datetime; None when unset. Raises ValueError for
    a value that is not an RFC 3339 time with a zone (``2026-12-07T03:00:00Z``)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if "T" not in text.upper():
        raise ValueError("not an RFC 3339 date-time (expected e.g. 2026-12-07T03:00:00Z)")
    parsed = datetime.fromisoformat(text.replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError("has no time zone (RFC 3339 needs Z or an offset)")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class RunDeadline:
    """``at`` is a ``time.monotonic()`` value, or None when the Job sets no deadline.
    ``counted_from`` says which instant set it, for the messages."""

    at: float | None
    reserve: float
    job_deadline_seconds: float | None
    counted_from: str = "the pod's start"

    @classmethod
    def start(cls, job_deadline_seconds: float | None, reserve: float,
              deadline_at: str | None = None) -> RunDeadline:
        if job_deadline_seconds is None:
            return cls(None, reserve, None)
        wall, now = time.time(), time.monotonic()
        at = now - process_age() + job_deadline_seconds
        counted_from = "the pod's start"
        try:
            kube_deadline = parse_deadline_at(deadline_at)
        except ValueError as exc:
            log.warning("JOB_DEADLINE_AT is not a time; the deadline counts from the "
                        "runner's own start, later than Kubernetes' own",
                        extra={"error": f"JOB_DEADLINE_AT={deadline_at[:64]!r}: {exc}"
                               if deadline_at else str(exc)})
            kube_deadline = None
        if kube_deadline is None:
            if deadline_at is None or not deadline_at.strip():
                log.warning("JOB_DEADLINE_AT is not set; the deadline counts from the "
                            "runner's own start, later than Kubernetes' own (which counts "
                            "from the Job's start, image pull included)")
        else:
            kube_at = now + (kube_deadline.timestamp() - wall)
            if kube_at < at:
                at = kube_at
                counted_from = (f"the Job's start (Kubernetes' deadline "
                                f"{kube_deadline.strftime('%Y-%m-%dT%H:%M:%SZ')})")
        return cls(at, reserve, job_deadline_seconds, counted_from)

    def wall_clock(self) -> str | None:
        """The deadline as an RFC 3339 UTC time (for the log), None without one."""
        if self.at is None:
            return None
        moment = time.time() + (self.at - time.monotonic())
        return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")

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
                f"{self.job_deadline_seconds:g}s from {self.counted_from}, less "
                f"REPORT_RESERVE_SECONDS={self.reserve:g}s kept to report")
