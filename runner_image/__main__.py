"""``python -m runner_image [run|migrate|register-server]`` (``run`` is the default).

``run`` is what the Kubernetes Job executes: it reads PROVISIONER_MESSAGE and the settings
from the environment, provisions the server, writes its status and publishes the result.
The process exit code says how it ended (see contracts/exit_codes.py / README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from contracts.connections import RedisSettings, create_redis
from contracts.exit_codes import ExitCode
from contracts.logs import configure_logging
from contracts.messages import InvalidMessage, ProvisionerMessage, parse_message
from contracts.results import ErrorKind, ResultEntry, now
from runner_image import outcome as out
from runner_image import redaction
from runner_image.deadline import RunDeadline
from runner_image.settings import (
    SECRET_VARIABLES,
    ConfigError,
    DatabaseSettings,
    RunnerSettings,
    describe_validation_error,
    load,
    scrub_secret_environment,
)

log = logging.getLogger("runner_image")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runner_image", description=__doc__,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the job described by PROVISIONER_MESSAGE (default)")
    sub.add_parser("migrate", help="apply pending database migrations")
    reg = sub.add_parser("register-server", help="add or update a server in the servers table",
                         allow_abbrev=False)
    reg.add_argument("--handle", required=True)
    reg.add_argument("--address", required=True, help="IP address or DNS name")
    reg.add_argument("--port", type=int, default=22)
    reg.add_argument("--user", default="root", help="SSH login user")
    reg.add_argument("--provider", default="time4vps")
    reg.add_argument("--provider-server-id")
    reg.add_argument("--password-env", default="SERVER_ROOT_PASSWORD",
                     help="environment variable holding the root password (never pass it as an "
                          "argument)")
    reg.add_argument("--clear-password", action="store_true")
    reg.add_argument("--forget-host-key", action="store_true",
                     help="accept a new host key on the next run (after an out-of-band reinstall)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("runner", os.environ.get("LOG_LEVEL", "INFO"))
    if args.command == "migrate":
        return asyncio.run(_migrate())
    if args.command == "register-server":
        return asyncio.run(_register(args))
    return asyncio.run(_run())


# -- migrate / register-server ---------------------------------------------------------------
async def _migrate() -> int:
    from runner_image.db import connect
    from runner_image.migrations import MigrationError, apply_migrations

    try:
        db = load(DatabaseSettings)
        conn = await connect(db)
    except (ConfigError, OSError) as exc:
        log.error("migrate failed", extra={"error": str(exc)})
        return ExitCode.REJECTED
    try:
        applied = await apply_migrations(conn)
    except MigrationError as exc:
        log.error("migrate failed", extra={"error": str(exc)})
        return ExitCode.FAILED
    finally:
        await conn.close()
    log.info("migrations up to date", extra={"applied": applied})
    return ExitCode.SUCCESS


async def _register(args: argparse.Namespace) -> int:
    from runner_image.db import connect
    from runner_image.register import Registration, register

    names = (*SECRET_VARIABLES, args.password_env)
    redact = redaction.Redactor(os.environ.get(n, "") for n in names)
    redaction.install({"server_handle": args.handle}, redact)
    reg = Registration(handle=args.handle, address=args.address, port=args.port, user=args.user,
                       provider=args.provider, provider_server_id=args.provider_server_id,
                       password_env=args.password_env, clear_password=args.clear_password,
                       forget_host_key=args.forget_host_key)
    try:
        db = load(DatabaseSettings)
        conn = await connect(db)
    except (ConfigError, OSError) as exc:
        log.error("register-server failed", extra={"error": str(exc)})
        return ExitCode.REJECTED
    try:
        inserted = await register(conn, db, reg)
    except ConfigError as exc:
        log.error("register-server failed", extra={"error": str(exc)})
        return ExitCode.REJECTED
    finally:
        await conn.close()
    log.info("server registered" if inserted else "server updated",
             extra={"address": args.address, "port": args.port})
    return ExitCode.SUCCESS


# -- run ----------------------------------------------------------------------------------------
def _preload(*modules: str) -> None:
    """Import modules in a thread, to overlap steps that wait on the network."""
    def load() -> None:
        for name in modules:
            importlib.import_module(name)

    threading.Thread(target=load, name="preload", daemon=True).start()


async def _publish(redis_settings: RedisSettings, entry: ResultEntry, *, attempts: int,
                   backoff: float) -> None:
    from runner_image.report import publish

    redis = create_redis(redis_settings)
    try:
        await publish(redis, redis_settings.keys, entry, attempts=attempts, backoff=backoff)
    finally:
        await redis.aclose()


async def _run() -> int:
    t0 = time.monotonic()
    started_at = now()
    job_name = os.environ.get("JOB_NAME") or None
    redact = redaction.Redactor(os.environ.get(name, "") for name in SECRET_VARIABLES)
    context: dict[str, object] = {"job_name": job_name}
    redaction.install(context, redact)

    try:
        redis_settings = RedisSettings()
    except ValidationError as exc:
        log.error("configuration error; cannot report", extra={
            "error": describe_validation_error(exc, "REDIS_")})
        return ExitCode.REJECTED
    except SettingsError:
        log.error("configuration error; cannot report", extra={
            "error": "a REDIS_* variable is invalid: not valid JSON"})
        return ExitCode.REJECTED

    async def report_only(outcome: out.Outcome, message: ProvisionerMessage | None,
                          request_id: str | None, handle: str | None) -> int:
        from runner_image.report import build_entry

        entry = build_entry(outcome, request_id=request_id, handle=handle,
                            action=message.action if message else None, job_name=job_name,
                            started_at=started_at, duration=time.monotonic() - t0, redact=redact)
        try:
            await _publish(redis_settings, entry, attempts=3, backoff=0.5)
        except Exception as exc:
            log.error("could not publish the result", extra={"error": str(exc)})
            _terminate_with(outcome, ExitCode.COULD_NOT_REPORT, redact)
            return ExitCode.COULD_NOT_REPORT
        _terminate_with(outcome, outcome.exit_code, redact)
        return outcome.exit_code

    raw = os.environ.get("PROVISIONER_MESSAGE")
    if not raw:
        log.error("PROVISIONER_MESSAGE is not set; nothing to do")
        return ExitCode.REJECTED
    try:
        message = parse_message(raw)
    except InvalidMessage as exc:
        context.update(server_handle=exc.server_handle, request_id=exc.request_id)
        log.error("invalid message", extra={"reason": exc.reason, "error": exc.detail})
        return await report_only(out.rejected(ErrorKind.INVALID_MESSAGE, exc.detail), None,
                                 exc.request_id, exc.server_handle)
    message = message.with_identity()
    context.update(server_handle=message.server_handle, request_id=message.request_id)
    problems: list[str] = []
    loaded: dict[type, object] = {}
    for cls in (RunnerSettings, DatabaseSettings):  # name every bad variable at once
        try:
            loaded[cls] = load(cls)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        scrub_secret_environment()
        text = "; ".join(problems)
        log.error("configuration error", extra={"error": text})
        return await report_only(out.rejected(ErrorKind.CONFIG_ERROR, f"configuration: {text}"),
                                 message, message.request_id, message.server_handle)
    settings = loaded[RunnerSettings]
    db_settings = loaded[DatabaseSettings]
    assert isinstance(settings, RunnerSettings) and isinstance(db_settings, DatabaseSettings)
    # Everything is read: drop the secrets from the environment (and the process's own
    # copy of it) before any child process starts.
    scrub_secret_environment()
    logging.getLogger().setLevel(settings.log_level.upper())
    problem = settings.deadline_problem(message.force_reinstall)
    if problem:
        log.error("configuration error", extra={"error": problem})
        return await report_only(out.rejected(ErrorKind.CONFIG_ERROR, f"configuration: {problem}"),
                                 message, message.request_id, message.server_handle)
    deadline = RunDeadline.start(settings.job_active_deadline_seconds,
                                 settings.report_reserve_seconds)
    return await _run_job(message, settings, db_settings, job_name, redact, redis_settings,
                          started_at, t0, deadline)


async def _run_job(message: ProvisionerMessage, settings: RunnerSettings,
                   db_settings: DatabaseSettings, job_name: str | None,
                   redact: redaction.Redactor, redis_settings: RedisSettings,
                   started_at: object, t0: float, deadline: RunDeadline) -> int:
    from runner_image.job import Job, RunContext, open_store
    from runner_image.reaping import become_subreaper

    become_subreaper()  # processes the play orphans are stopped at the end of the run
    cancelled = threading.Event()
    ctx = RunContext(message, settings, db_settings, job_name, redact, cancelled, deadline)
    log.info("run started", extra={"action": message.action.value})
    # From here the run mostly waits (database, ssh-agent, SSH): import what comes later
    # meanwhile. Started earlier, the imports would only compete with start-up for the GIL.
    _preload("runner_image.report", "ansible_runner")
    loop = asyncio.get_running_loop()
    job_task: asyncio.Task[out.Outcome] | None = None

    def on_signal(signum: int) -> None:
        log.warning("signal received; cancelling", extra={"signal": signal.Signals(signum).name})
        cancelled.set()
        if job_task is not None and not job_task.done():
            job_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    attempts, backoff = settings.report_attempts, settings.report_backoff_base
    # The deploy key is decoded in a thread while the database connection is set up; a
    # bad key still ends the run before anything is touched.
    key_check = asyncio.ensure_future(asyncio.to_thread(
        _deploy_key_problem, settings.orchestrator_ssh_public_key))
    store_cm = open_store(db_settings, attempts, backoff)
    store = None
    claimed = False
    try:
        try:
            store = await store_cm.__aenter__()
        except Exception as exc:
            outcome = out.failed(ErrorKind.DATABASE_UNAVAILABLE,
                                 f"cannot reach the database at DATABASE_URL: {exc}",
                                 server_status=None)
        key_problem = await key_check
        if key_problem:
            log.error("configuration error", extra={"error": key_problem})
            outcome = out.rejected(ErrorKind.CONFIG_ERROR, f"configuration: {key_problem}")
        elif store is not None:
            job = Job(ctx, store)
            job_task = asyncio.create_task(job.execute())
            try:
                outcome = await job_task
            except asyncio.CancelledError:
                outcome = job.cancelled("before the run started")
            except Exception as exc:
                log.exception("run failed unexpectedly")
                outcome = out.failed(ErrorKind.INTERNAL,
                                     f"unexpected error: {type(exc).__name__}: {exc}")
            claimed = job.claimed
        from runner_image.report import build_entry, write_status

        ok = True
        if claimed and outcome.server_status is not None:
            try:
                # Half of what is left (the reserve included) for the status, the rest for
                # the result: both are written before Kubernetes kills the pod.
                await asyncio.wait_for(
                    write_status(store, db_settings, message.server_handle,
                                 ctx.request_id, outcome.server_status, outcome.reason,
                                 attempts=attempts, backoff=backoff, ssh_port=outcome.ssh_port),
                    _report_time(deadline, share=0.5))
            except Exception as exc:
                log.error("could not write the server status", extra={"error": str(exc)})
                ok = False
        entry: ResultEntry = build_entry(
            outcome, request_id=message.request_id, handle=message.server_handle,
            action=message.action, job_name=job_name, started_at=started_at,  # type: ignore[arg-type]
            duration=time.monotonic() - t0, redact=redact)
        try:
            await asyncio.wait_for(
                _publish(redis_settings, entry, attempts=attempts, backoff=backoff),
                _report_time(deadline, share=1.0))
        except Exception as exc:
            log.error("could not publish the result",
                      extra={"error": str(exc) or type(exc).__name__})
            ok = False
    finally:
        if store is not None:
            await store_cm.__aexit__(None, None, None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    code = outcome.exit_code if ok else ExitCode.COULD_NOT_REPORT
    _terminate_with(outcome, code, redact)
    log.info("run finished", extra={"status": outcome.status.value, "exit_code": int(code),
                                    "error_kind": outcome.error.kind if outcome.error else None,
                                    "duration_seconds": round(time.monotonic() - t0, 3)})
    return code


def _terminate_with(outcome: out.Outcome, code: int, redact: redaction.Redactor) -> None:
    """`<kind>: <summary>` where Kubernetes shows it (the pod's termination message)."""
    from runner_image.termination import write_for_outcome

    error = outcome.error
    write_for_outcome(error.kind if error else None, error.message if error else None, code,
                      redact)


def _deploy_key_problem(line: str) -> str | None:
    from runner_image.deploy_key import InvalidPublicKey, check_key_material

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


def entrypoint() -> NoReturn:
    """The console entry point: ``main()``, then an immediate exit.

    By then every connection is closed, every child stopped, the result published and the
    logs flushed below; the interpreter's own teardown of the ~2,000 modules ansible-runner,
    pydantic and asyncpg bring would only add about 0.15 s to every Job.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entrypoint()
