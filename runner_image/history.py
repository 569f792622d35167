"""The run's row in the run history (table ``runs``, contracts/run_history.py): what only
the runner knows, written once at the end of the run, after its result.

Best effort: the row is written after the server's status and the result, within what is
left of the report's time, and a failure is a warning, never a different exit code (the
result on Redis is the record the Scheduler acts on; the dispatcher completes the row's
outcome from that result when the Job ends).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path

import asyncpg
from pydantic import Field, SecretStr

from contracts.results import ResultEntry
from contracts.run_history import Phase, RunColumns, bounded_message
from runner_image import outcome as out
from runner_image.deploy_key import PublicKey
from runner_image.job import Steps
from runner_image.phases import RunTrace
from runner_image.play import PlayOutcome, StartedPlay
from runner_image.play_env import PlayEnvironment
from runner_image.redaction import Redactor
from runner_image.ssh import SshClient, SshResult

log = logging.getLogger(__name__)


def runner_version() -> str:
    try:
        return metadata.version("infra-service")
    except metadata.PackageNotFoundError:
        return "unknown"


class TimedSteps:
    """The run's steps, each timed under its phase in the run's trace."""

    def __init__(self, steps: Steps, trace: RunTrace) -> None:
        self.steps = steps
        self.trace = trace

    async def reinstall(self, server_id: str, own_key: PublicKey,
                        requested: Callable[[str], None]) -> out.Outcome | None:
        with self.trace.timing(Phase.REINSTALL):
            return await self.steps.reinstall(server_id, own_key, requested)

    async def wait_for_ssh(self, client: SshClient,
                           password: SecretStr | None) -> SshResult | out.Outcome:
        with self.trace.timing(Phase.SSH_CHECK):
            return await self.steps.wait_for_ssh(client, password)

    async def check_ssh(self, client: SshClient, password: SecretStr | None, *,
                        accept_new: bool) -> SshResult | out.Outcome:
        with self.trace.timing(Phase.SSH_CHECK):
            return await self.steps.check_ssh(client, password, accept_new=accept_new)

    async def install_keys(self, client: SshClient, login_user: str,
                           own_key: PublicKey) -> bool | out.Outcome:
        with self.trace.timing(Phase.KEYS):
            return await self.steps.install_keys(client, login_user, own_key)

    async def start_play(self, env: PlayEnvironment, playbook: Path) -> StartedPlay | None:
        # Started beside the SSH check and held at its gate: counted in no phase.
        return await self.steps.start_play(env, playbook)

    async def play(self, env: PlayEnvironment, playbooks: list[Path],
                   first: StartedPlay | None) -> PlayOutcome:
        with self.trace.timing(Phase.PLAY):
            return await self.steps.play(env, playbooks, first)


class RunRow(RunColumns):
    """The runner's columns of its row (queued_at is used only when the dispatcher has not
    inserted the row; no result published, e.g. SIGTERM, leaves the outcome None)."""

    request_id: str = Field(min_length=1)
    action: str
    runner_version: str
    started_at: datetime
    finished_at: datetime


def run_row(entry: ResultEntry, trace: RunTrace, *, published: bool, queued_at: datetime,
            redact: Redactor) -> RunRow:
    """The row of a run from the result it built (published or not) and its trace."""
    assert entry.request_id and entry.server_handle and entry.started_at
    error = entry.error if published else None
    recap = entry.recap
    return RunRow(
        request_id=entry.request_id, server_handle=entry.server_handle,
        action=entry.action.value if entry.action else "setup", job_name=entry.job_name,
        runner_version=runner_version(), queued_at=min(queued_at, entry.started_at),
        started_at=entry.started_at, finished_at=entry.finished_at, phases=trace.phases(),
        status=entry.status.value if published else None,
        error_kind=error.kind.value if error else None,
        reported_by=entry.reported_by.value if published else None,
        failed_task=_masked(error.task if error else None, redact),
        failed_host=_masked(error.host if error else None, redact),
        message=bounded_message(redact(error.message)) if error else None,
        changed_count=recap.changed if recap else None, ok_count=recap.ok if recap else None,
        ssh_port_before=trace.ssh_port_before, ssh_port_after=entry.ssh_port)


def _masked(text: str | None, redact: Redactor) -> str | None:
    return bounded_message(redact(text)) if text is not None else None


# The runner's columns; the dispatcher's (replica, image, launched_at) are left to it, and
# queued_at is the dispatcher's when it inserted first (it saw the message queued).
_UPSERT = """
INSERT INTO runs (request_id, server_handle, action, job_name, runner_version, queued_at,
                  started_at, finished_at, phases, status, error_kind, reported_by,
                  failed_task, failed_host, message, changed_count, ok_count,
                  ssh_port_before, ssh_port_after)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, $15, $16, $17,
        $18, $19)
ON CONFLICT (request_id) DO UPDATE SET
    job_name = COALESCE(runs.job_name, EXCLUDED.job_name),
    runner_version = EXCLUDED.runner_version,
    started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at,
    phases = runs.phases || EXCLUDED.phases,
    status = COALESCE(EXCLUDED.status, runs.status),
    error_kind = CASE WHEN EXCLUDED.status IS NULL THEN runs.error_kind
                      ELSE EXCLUDED.error_kind END,
    reported_by = COALESCE(EXCLUDED.reported_by, runs.reported_by),
    failed_task = COALESCE(EXCLUDED.failed_task, runs.failed_task),
    failed_host = COALESCE(EXCLUDED.failed_host, runs.failed_host),
    message = COALESCE(EXCLUDED.message, runs.message),
    changed_count = EXCLUDED.changed_count,
    ok_count = EXCLUDED.ok_count,
    ssh_port_before = EXCLUDED.ssh_port_before,
    ssh_port_after = EXCLUDED.ssh_port_after,
    updated_at = now()
"""


async def write_run(conn: asyncpg.Connection, row: RunRow) -> None:
    await conn.execute(
        _UPSERT, row.request_id, row.server_handle, row.action, row.job_name,
        row.runner_version, row.queued_at, row.started_at, row.finished_at,
        json.dumps(row.phases), row.status, row.error_kind, row.reported_by, row.failed_task,
        row.failed_host, row.message, row.changed_count, row.ok_count, row.ssh_port_before,
        row.ssh_port_after)
