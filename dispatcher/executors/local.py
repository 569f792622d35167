"""Runs each message as a local subprocess: development and the demo, no cluster needed.

The runner gets the same environment a Job would give it (message, Job name, deploy key,
the deadline's instant, DISPATCHER_JOB_ENV), plus this process's own environment for its
secrets. Runs do not survive a dispatcher restart: Jobs found in Redis but unknown here are
reported as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from contracts.exit_codes import ExitCode
from contracts.messages import ProvisionerMessage
from dispatcher.executors.base import JobEnd, JobView, LaunchRejected
from dispatcher.jobspec import ENV_DEADLINE_AT, deadline_at_after, runner_env
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

log = logging.getLogger(__name__)


@dataclass
class _Run:
    message: ProvisionerMessage
    process: asyncio.subprocess.Process
    started_at: datetime
    end: JobEnd | None = None
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)


class LocalExecutor:
    def __init__(self, settings: DispatcherSettings, template: JobTemplateSettings) -> None:
        self.settings = settings
        self.template = template
        self.ends: asyncio.Queue[JobEnd] = asyncio.Queue()
        self._runs: dict[str, _Run] = {}
        self.healthy = True
        self.on_pod_rejected: Callable[[str], None] | None = None  # no admission here

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        # Runs outlive a dispatcher shutdown only as orphans; end them so nothing is left.
        for run in self._runs.values():
            if run.process.returncode is None:
                run.process.terminate()
        for run in self._runs.values():
            if run.waiter:
                with contextlib.suppress(asyncio.CancelledError, ProcessLookupError):
                    await asyncio.wait_for(asyncio.shield(run.waiter), 30)

    async def preflight(self) -> str | None:
        return None  # a subprocess has no API to refuse it

    async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
        if job_name in self._runs:
            return False
        self._forget_finished()
        env = {**os.environ, **self.template.env,
               **runner_env(message, job_name, self.settings.orchestrator_ssh_public_key,
                            self.template.active_deadline_seconds),
               # What a Job's pod gets through the downward API: no Kubernetes kills this
               # process, but the runner's deadline counts from the launch all the same.
               ENV_DEADLINE_AT: deadline_at_after(self.template.active_deadline_seconds)}
        stdout = None
        if self.settings.local_workdir:
            workdir = Path(self.settings.local_workdir)
            workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - local disk
            stdout = (workdir / f"{job_name}.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *self.settings.local_command, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout, stderr=asyncio.subprocess.STDOUT if stdout else None,
            )
        except OSError as exc:
            raise LaunchRejected(f"cannot start runner command {self.settings.local_command[0]!r}: "
                                 f"{exc.strerror}") from None
        finally:
            if stdout:
                stdout.close()
        run = _Run(message, process, datetime.now(UTC))
        self._runs[job_name] = run
        run.waiter = asyncio.create_task(self._wait(job_name, run))
        return True

    async def _wait(self, job_name: str, run: _Run) -> None:
        code = await run.process.wait()
        ok = code == 0
        # The runner's cancelled code (SIGTERM) is the dispatcher's to report, as on a pod.
        failed = "Cancelled" if code == ExitCode.CANCELLED else "Error"
        run.end = JobEnd(job_name, run.message.server_handle, run.message.request_id or "",
                         ok, "Completed" if ok else failed,
                         "runner completed" if ok else f"runner exited with code {code}",
                         started_at=run.started_at, action=run.message.action.value,
                         mode=run.message.mode.value,
                         finished_at=datetime.now(UTC))
        self.ends.put_nowait(run.end)

    def _forget_finished(self, keep_seconds: float = 600) -> None:
        now = datetime.now(UTC)
        for name, run in list(self._runs.items()):
            if run.end and (now - run.started_at).total_seconds() > keep_seconds:
                del self._runs[name]

    async def stop_job(self, job_name: str, reason: str, message: str) -> None:
        run = self._runs.get(job_name)
        if run and run.process.returncode is None:
            run.process.terminate()

    async def record_failure(self, end: JobEnd) -> None:
        """Nothing beyond the result and the dispatcher's log: no objects to annotate."""

    def snapshot(self) -> dict[str, JobView] | None:
        return {name: JobView(name, run.message.server_handle, run.message.request_id or "",
                              run.end) for name, run in self._runs.items()}
