"""The interface between the dispatch loop and whatever runs the runner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from contracts.messages import ProvisionerMessage


@dataclass(frozen=True)
class JobEnd:
    """A runner Job that is over, or must be made over (a stuck pod)."""

    job_name: str
    server_handle: str
    request_id: str
    succeeded: bool
    reason: str  # Kubernetes vocabulary: Completed, DeadlineExceeded, OOMKilled, ErrImagePull...
    message: str
    started_at: datetime | None = None
    action: str | None = None
    mode: str | None = None  # the Job's mode label: plan or run (None: a Job without it)
    # When the Job ended (completionTime / the Failed condition); None: when it was noticed.
    finished_at: datetime | None = None
    stop_job: bool = False  # the Job is stuck: the dispatcher stops it before reporting


@dataclass(frozen=True)
class JobView:
    """What the executor currently knows about one of its Jobs."""

    job_name: str
    server_handle: str
    request_id: str
    end: JobEnd | None  # None while it runs


class LaunchRejected(Exception):
    """The executor refused this Job for good (retrying cannot help)."""


class TransientLaunchError(Exception):
    """The launch failed in a way that may pass (API down, throttled, RBAC being fixed)."""

    def __init__(self, message: str, retry_after: float | None = None,
                 maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # No answer (or a 5xx): the create may have been stored all the same.
        self.maybe_applied = maybe_applied


# How a preflight refusal of the runner pod (not of the Job) begins: launches are held.
POD_REFUSAL_PREFIX = "runner pod refused at admission"


class Executor(Protocol):
    ends: asyncio.Queue[JobEnd]
    # Called (on the event loop) when the backend saw a runner pod refused at admission,
    # with the refusal; the preflight holds launches until a dry run passes again.
    on_pod_rejected: Callable[[str], None] | None

    async def start(self) -> None:
        """Begin observing Jobs; Jobs that ended while nobody watched are put on ``ends``."""

    async def stop(self) -> None: ...

    async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
        """Start the runner; True if created now, False if it already existed.

        Raises LaunchRejected or TransientLaunchError.
        """

    async def preflight(self) -> str | None:
        """Check that Jobs built from the settings are accepted (server-side dry run).

        None when accepted; the refusal (naming the offending field) otherwise, starting
        with POD_REFUSAL_PREFIX when the Job passes but its pod is refused at admission
        (PodSecurity, ResourceQuota, a policy webhook). Raises
        TransientLaunchError when the backend cannot tell now.
        """

    async def stop_job(self, job_name: str, reason: str, message: str) -> None:
        """Stop a stuck Job, keeping its record where the backend has one; absent is
        fine."""

    async def record_failure(self, end: JobEnd) -> None:
        """Leave the reason of a failure the dispatcher reports itself where the backend's
        own tools show it (a Kubernetes Event on the Job)."""

    def snapshot(self) -> dict[str, JobView] | None:
        """The Jobs known now, or None until the first full listing is done."""

    @property
    def healthy(self) -> bool:
        """False while the backend (e.g. the Kubernetes API) is unreachable."""
