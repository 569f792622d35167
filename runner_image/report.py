"""Reporting a run: the server's status in PostgreSQL first, then exactly one result entry.

Both writes are retried with exponential backoff (the run's REPORT_ATTEMPTS and
REPORT_BACKOFF_BASE) while the database or Redis is briefly unavailable; if either still
fails the caller exits with COULD_NOT_REPORT so that the dispatcher's Job watcher reports the
request instead.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts.keys import Keys
from contracts.messages import Action, RunMode
from contracts.reporting import publish_result
from contracts.results import (
    PLAN_DIFF_LIMIT,
    PLAN_TEXT_LIMIT,
    Plan,
    Reporter,
    ResultEntry,
    ResultError,
    now,
)
from runner_image.db import TRANSIENT_DB_ERRORS, LockLost, ServerStatus, ServerStore, connect
from runner_image.outcome import Outcome
from runner_image.redaction import Redactor
from runner_image.retrying import Backoff, with_retries
from runner_image.settings import DatabaseSettings

log = logging.getLogger(__name__)


def build_entry(outcome: Outcome, *, request_id: str | None, handle: str | None,
                action: Action | None, mode: RunMode | None, job_name: str | None,
                started_at: datetime,
                duration: float, redact: Redactor) -> ResultEntry:
    error = outcome.error
    if error is not None:
        # Every text field masked again: secrets learnt after the error was built count too.
        fields = error.model_dump()
        error = ResultError.model_validate({
            **fields, **{name: redact(value) for name, value in fields.items()
                         if isinstance(value, str) and name != "kind"}})
    return ResultEntry(
        request_id=request_id, server_handle=handle, action=action, mode=mode,
        status=outcome.status,
        reported_by=Reporter.RUNNER, job_name=job_name, started_at=started_at,
        finished_at=now(), duration_seconds=round(duration, 3), error=error,
        recap=outcome.recap, details=outcome.details, ssh_port=outcome.ssh_port,
        ssh_port_changed=outcome.ssh_port_changed,
        plan=_masked_plan(outcome.plan, redact),
    )


_PLAN_TEXT_BOUNDS = {"task": PLAN_TEXT_LIMIT, "role": PLAN_TEXT_LIMIT,
                     "reason": PLAN_TEXT_LIMIT, "diff": PLAN_DIFF_LIMIT}


def _masked_plan(plan: Plan | None, redact: Redactor) -> Plan | None:
    """The plan with every text masked again (secrets learnt after it was built count too),
    then cut to its bound."""
    if plan is None:
        return None
    tasks = [{name: redact(value)[:_PLAN_TEXT_BOUNDS[name]]
              if name in _PLAN_TEXT_BOUNDS and isinstance(value, str) else value
              for name, value in task.model_dump().items()} for task in plan.tasks]
    return Plan.model_validate({**plan.model_dump(), "tasks": tasks})


async def write_status(store: ServerStore | None, db_settings: DatabaseSettings, handle: str,
                       request_id: str, status: ServerStatus, reason: str | None, *,
                       policy: Backoff, ssh_port: int | None = None) -> None:
    """Compare-and-set the final status (and the port sshd was left on), with the server's
    lock held. If the run's connection broke (and with it the lock), a new connection takes
    the lock again without waiting: if another run holds it now, nothing is written."""
    current = {"store": store}

    async def attempt() -> None:
        st = current["store"]
        if st is None or st.conn.is_closed():
            st = current["store"] = ServerStore(await connect(db_settings), db_settings)
            await st.try_lock(handle)
        try:
            written = await st.set_status(handle, request_id, status, reason, finished=True,
                                          ssh_port=ssh_port)
        except TRANSIENT_DB_ERRORS:
            current["store"] = None
            raise
        except LockLost as exc:
            log.warning("server status not written: the run lost the server's lock",
                        extra={"status": status.value, "error": str(exc)})
            return
        if written:
            log.info("server status written", extra={"status": status.value,
                                                     "ssh_port": ssh_port})
        else:
            log.warning("server status not written: another run owns the server now",
                        extra={"status": status.value})

    try:
        # Transient: the database briefly away (a new connection is made for the next try).
        await with_retries("server status write", attempt, policy,
                           transient=TRANSIENT_DB_ERRORS)
    finally:
        fresh = current["store"]
        if fresh is not None and fresh is not store:
            await fresh.conn.close()


async def publish(redis: aioredis.Redis, keys: Keys, entry: ResultEntry, *,
                  policy: Backoff) -> None:
    # Transient: Redis unreachable or slow. The publish script is idempotent (its marker), so
    # a retry after a lost reply cannot push a second entry.
    pushed = await with_retries("result publish", lambda: publish_result(redis, keys, entry),
                                policy, transient=(RedisConnectionError, RedisTimeoutError,
                                                   OSError))
    log.info("result published" if pushed else "result already reported for this request",
             extra={"status": entry.status.value})
