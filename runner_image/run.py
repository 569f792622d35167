"""``run``: one ProvisionerMessage from the environment to a published result.

Top to bottom: read the Redis settings (without them nothing can be reported), the message
and the other settings (a bad one is reported as rejected); then, with the database
connection and the signal handlers held for the run, execute the job; write the server's
status and publish exactly one result; leave ``<kind>: <summary>`` as the pod's termination
message. The exit code says how it ended (contracts/exit_codes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError
from pydantic_settings import SettingsError

from contracts.connections import RedisSettings, create_redis
from contracts.exit_codes import ExitCode
from contracts.messages import InvalidMessage, ProvisionerMessage, parse_message
from contracts.results import ErrorKind, ResultEntry, now
from contracts.run_history import Phase
from runner_image import outcome as out
from runner_image import redaction
from runner_image.context import RunContext
from runner_image.db import ServerStore, connect, open_store
from runner_image.deadline import RunDeadline
from runner_image.deploy_key import InvalidPublicKey, check_key_material
from runner_image.job import Job
from runner_image.reaping import become_subreaper
from runner_image.retrying import Backoff
from runner_image.settings import (
    SECRET_VARIABLES,
    ConfigError,
    DatabaseSettings,
    RunnerSettings,
    describe_validation_error,
    load,
    scrub_secret_environment,
)
from runner_image.steps import RunSteps
from runner_image.termination import write_for_outcome
from runner_image.warmup import Warmup
from runner_image.workspace import Workspace

log = logging.getLogger("runner_image")

# Loaded by the run's warm-up thread (runner_image/warmup.py) while it waits on SSH.
REPORT_MODULE = "runner_image.report"
# A run rejected before its settings are read still tries a few times to report it.
EARLY_REPORT_POLICY = Backoff(attempts=3, first_pause=0.5)
# The run's history row is written after its result, within this (or what is left of the
# deadline): a database that does not answer delays the pod's end by no more.
HISTORY_WRITE_SECONDS = 10.0


@dataclass
class RunInfo:
    """What every report of this run carries, fixed when the process starts."""

    redis_settings: RedisSettings
    redact: redaction.Redactor
    job_name: str | None
    started_at: datetime
    t0: float  # time.monotonic() at start

    def entry(self, outcome: out.Outcome, message: ProvisionerMessage | None,
              request_id: str | None, handle: str | None) -> ResultEntry:
        # runner_image.report is imported where it is used: a run loads it in its warm-up
        # thread during the SSH check (REPORT_MODULE), not in its start-up.
        from runner_image.report import build_entry

        return build_entry(outcome, request_id=request_id, handle=handle,
                           action=message.action if message else None,
                           mode=message.mode if message else None, job_name=self.job_name,
                           started_at=self.started_at, duration=time.monotonic() - self.t0,
                           redact=self.redact)


async def run() -> int:
    job_name = os.environ.get("JOB_NAME") or None
    redact = redaction.Redactor(os.environ.get(name, "") for name in SECRET_VARIABLES)
    context: dict[str, object] = {"job_name": job_name}
    redaction.install(context, redact)
    started_at, t0 = now(), time.monotonic()

    redis_settings = _redis_settings()
    if redis_settings is None:
        return ExitCode.REJECTED
    info = RunInfo(redis_settings, redact, job_name, started_at, t0)

    raw = os.environ.get("PROVISIONER_MESSAGE")
    if not raw:
        log.error("PROVISIONER_MESSAGE is not set; nothing to do")
        return ExitCode.REJECTED
    try:
        message = parse_message(raw).with_identity()
    except InvalidMessage as exc:
        context.update(server_handle=exc.server_handle, request_id=exc.request_id)
        log.error("invalid message", extra={"reason": exc.reason, "error": exc.detail})
        return await _report_only(info, out.rejected(ErrorKind.INVALID_MESSAGE, exc.detail),
                                  None, exc.request_id, exc.server_handle)
    context.update(server_handle=message.server_handle, request_id=message.request_id)

    loaded = _load_settings()
    # Everything is read: drop the secrets from the environment (and the process's own
    # copy of it) before any child process starts.
    scrub_secret_environment()
    if isinstance(loaded, str):
        log.error("configuration error", extra={"error": loaded})
        return await _report_only(info, out.rejected(ErrorKind.CONFIG_ERROR,
                                                     f"configuration: {loaded}"),
                                  message, message.request_id, message.server_handle)
    settings, db_settings = loaded
    logging.getLogger().setLevel(settings.log_level.upper())
    problem = settings.deadline_problem(message.force_reinstall)
    if problem:
        log.error("configuration error", extra={"error": problem})
        return await _report_only(info, out.rejected(ErrorKind.CONFIG_ERROR,
                                                     f"configuration: {problem}"),
                                  message, message.request_id, message.server_handle)
    deadline = RunDeadline.start(settings.job_active_deadline_seconds,
                                 settings.report_reserve_seconds, settings.job_deadline_at)
    return await _run_job(info, message, settings, db_settings, deadline)


def _redis_settings() -> RedisSettings | None:
    try:
        return RedisSettings()
    except ValidationError as exc:
        log.error("configuration error; cannot report", extra={
            "error": describe_validation_error(exc, "REDIS_")})
    except SettingsError:
        log.error("configuration error; cannot report", extra={
            "error": "a REDIS_* variable is invalid: not valid JSON"})
    return None


def _load_settings() -> tuple[RunnerSettings, DatabaseSettings] | str:
    """Both settings groups, or every bad variable named at once."""
    problems: list[str] = []
    runner: RunnerSettings | None = None
    database: DatabaseSettings | None = None
    try:
        runner = load(RunnerSettings)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        database = load(DatabaseSettings)
    except ConfigError as exc:
        problems.append(str(exc))
    if runner is None or database is None:
        return "; ".join(problems)
    return runner, database


async def _run_job(info: RunInfo, message: ProvisionerMessage, settings: RunnerSettings,
                   db_settings: DatabaseSettings, deadline: RunDeadline) -> int:
    become_subreaper()  # processes the play orphans are stopped at the end of the run
    policy = Backoff(settings.report_attempts, settings.report_backoff_base)
    signals = Cancellation()
    ctx = RunContext(message, settings, db_settings, info.job_name, info.redact,
                     signals.event, deadline, Warmup(REPORT_MODULE, "ansible_runner"))
    log.info("run started", extra={"action": message.action.value,
                                   "deadline": deadline.wall_clock(),
                                   "deadline_from": deadline.counted_from})
    # The deploy key is decoded in a thread while the database connection is set up; a
    # bad key still ends the run before anything is touched.
    key_check = asyncio.ensure_future(asyncio.to_thread(
        _deploy_key_problem, settings.orchestrator_ssh_public_key))

    async with contextlib.AsyncExitStack() as held:
        held.enter_context(signals.handled())
        workspace = await held.enter_async_context(Workspace.opened(
            settings.runner_scratch_dir, settings.ssh_private_key))
        try:
            store = await held.enter_async_context(open_store(db_settings, policy))
        except Exception as exc:
            store = None
            outcome = out.failed(ErrorKind.DATABASE_UNAVAILABLE,
                                 f"cannot reach the database at DATABASE_URL: {exc}",
                                 server_status=None)
        claimed = False
        key_problem = await key_check
        if key_problem:
            log.error("configuration error", extra={"error": key_problem})
            outcome = out.rejected(ErrorKind.CONFIG_ERROR, f"configuration: {key_problem}")
        elif store is not None:
            outcome, claimed = await _execute(ctx, store, workspace, signals)
        workspace.wind_up_soon()  # beside the report
        # Stopped by SIGTERM: the pod is being deleted, and whether it is replaced (a
        # disruption: eviction, node drain, preemption) or not (the Job deleted or past its
        # deadline, the pod deleted) only Kubernetes knows. The server's status is written
        # as always; the result is left to the dispatcher, which sees how the Job ends.
        signalled = signals.event.is_set() and outcome.error is not None and \
            outcome.error.kind is ErrorKind.CANCELLED
        with ctx.trace.timing(Phase.REPORT):
            ok = await _report(info, ctx, outcome, claimed, store, policy,
                               publish=not signalled)
        await _record_history(info, ctx, outcome, store, published=ok and not signalled)

    code = outcome.exit_code if ok else ExitCode.COULD_NOT_REPORT
    _finish(info, outcome, code)
    return code


def _finish(info: RunInfo, outcome: out.Outcome, code: int) -> None:
    """The pod's termination message and the run's last log line, both saying why."""
    _terminate_with(outcome, code, info.redact)
    error = outcome.error
    # The message is masked by the log filter, as the result's is by build_entry.
    log.log(logging.INFO if error is None else logging.ERROR, "run finished", extra={
        "status": outcome.status.value, "exit_code": int(code),
        "error_kind": error.kind.value if error else None,
        "error": error.message if error else None,
        "duration_seconds": round(time.monotonic() - info.t0, 3)})


class Cancellation:
    """SIGTERM (pod deletion) or SIGINT: set the run's flag, which the play's thread reads,
    and cancel the job's task, which turns into a ``cancelled`` outcome: the server's status
    is written, the exit code is CANCELLED, and no result is published (the dispatcher
    publishes one when the Job ends without a runner result)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.task: asyncio.Task[out.Outcome] | None = None

    def _on_signal(self, signum: int) -> None:
        log.warning("signal received; cancelling", extra={"signal": signal.Signals(signum).name})
        self.event.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    @contextlib.contextmanager
    def handled(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def _execute(ctx: RunContext, store: ServerStore, workspace: Workspace,
                   signals: Cancellation) -> tuple[out.Outcome, bool]:
    """The job's outcome, and whether it claimed the server (only then is a status written)."""
    from runner_image.history import TimedSteps  # see RunInfo.entry

    job = Job(ctx, store, workspace, TimedSteps(RunSteps(ctx), ctx.trace))
    signals.task = asyncio.create_task(job.execute())
    try:
        outcome = await signals.task
    except asyncio.CancelledError:
        outcome = job.cancelled("before the run started")
    except Exception as exc:
        log.exception("run failed unexpectedly")
        outcome = out.failed(ErrorKind.INTERNAL, f"unexpected error: {type(exc).__name__}: {exc}")
    return outcome, job.claimed


async def _report(info: RunInfo, ctx: RunContext, outcome: out.Outcome, claimed: bool,
                  store: ServerStore | None, policy: Backoff, *, publish: bool = True) -> bool:
    """The server's status (if this run claimed it), then the result unless ``publish``
    is false (SIGTERM: the dispatcher reports); False when either could not be written
    before the deadline."""
    from runner_image.report import write_status  # see RunInfo.entry

    message, deadline = ctx.message, ctx.deadline
    ok = True
    if claimed and outcome.server_status is not None:
        try:
            # Half of what is left (the reserve included) for the status, the rest for the
            # result: both are written before Kubernetes kills the pod.
            await asyncio.wait_for(
                write_status(store, ctx.db_settings, message.server_handle, ctx.request_id,
                             outcome.server_status, outcome.reason, policy=policy,
                             ssh_port=outcome.ssh_port),
                _report_time(deadline, share=0.5))
        except Exception as exc:
            log.error("could not write the server status", extra={"error": str(exc)})
            ok = False
    if not publish:
        log.warning("stopped by SIGTERM: no result published; the dispatcher reports how "
                    "the Job ended (disrupted and replaced, deleted, or past its deadline)")
        return ok
    entry = info.entry(outcome, message, message.request_id, message.server_handle)
    try:
        await asyncio.wait_for(_publish(info.redis_settings, entry, policy),
                               _report_time(deadline, share=1.0))
    except Exception as exc:
        log.error("could not publish the result", extra={"error": str(exc) or type(exc).__name__})
        ok = False
    return ok


async def _record_history(info: RunInfo, ctx: RunContext, outcome: out.Outcome,
                          store: ServerStore | None, *, published: bool) -> None:
    """The run's row in the run history, after the result and within a bound: a failure is
    logged, and the dispatcher still records the run (its outcome from the result) at the
    Job's end; what only the runner knows (phases, counts, ports) is then missing."""
    from runner_image.history import run_row, write_run  # see RunInfo.entry

    if store is None:  # the database did not answer at the start: no waiting for it again
        log.warning("run history not written: the database was unavailable; the dispatcher "
                    "records the run's outcome when the Job ends")
        return
    message = ctx.message
    entry = info.entry(outcome, message, message.request_id, message.server_handle)
    row = run_row(entry, ctx.trace, published=published,
                  queued_at=message.enqueued_at or entry.finished_at, redact=info.redact)
    left = _report_time(ctx.deadline, share=1.0)
    bound = HISTORY_WRITE_SECONDS if left is None else min(HISTORY_WRITE_SECONDS, left)
    conn = None if store.conn.is_closed() else store.conn
    fresh = None
    try:
        async with asyncio.timeout(bound):
            if conn is None:
                conn = fresh = await connect(ctx.db_settings)
            await write_run(conn, row)
        log.info("run history written")
    except Exception as exc:
        log.warning("run history not written; the dispatcher records the run's outcome when "
                    "the Job ends, without its phases", extra={
                        "error": str(exc) or type(exc).__name__})
    finally:
        if fresh is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fresh.close(), 5)


async def _report_only(info: RunInfo, outcome: out.Outcome, message: ProvisionerMessage | None,
                       request_id: str | None, handle: str | None) -> int:
    """A run that ends before touching anything: its result only."""
    entry = info.entry(outcome, message, request_id, handle)
    try:
        await _publish(info.redis_settings, entry, EARLY_REPORT_POLICY)
    except Exception as exc:
        log.error("could not publish the result", extra={"error": str(exc)})
        _finish(info, outcome, ExitCode.COULD_NOT_REPORT)
        return ExitCode.COULD_NOT_REPORT
    _finish(info, outcome, outcome.exit_code)
    return outcome.exit_code


async def _publish(redis_settings: RedisSettings, entry: ResultEntry, policy: Backoff) -> None:
    from runner_image.report import publish  # see RunInfo.entry

    redis = create_redis(redis_settings)
    try:
        await publish(redis, redis_settings.keys, entry, policy=policy)
    finally:
        await redis.aclose()


def _terminate_with(outcome: out.Outcome, code: int, redact: redaction.Redactor) -> None:
    """`<kind>: <summary>` where Kubernetes shows it (the pod's termination message)."""
    error = outcome.error
    write_for_outcome(error.kind if error else None, error.message if error else None, code,
                      redact)


def _deploy_key_problem(line: str) -> str | None:
    key_type, body = line.split()[:2]
    try:
        check_key_material(key_type, body)
    except InvalidPublicKey as exc:
        return f"ORCHESTRATOR_SSH_PUBLIC_KEY is invalid: {exc}"
    return None


def _report_time(deadline: RunDeadline, share: float) -> float | None:
    """Seconds a report write may take: ``share`` of what is left before the deadline."""
    if deadline.at is None:
        return None
    return max(1.0, (deadline.left() + deadline.reserve) * share)
