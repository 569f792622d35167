"""The result the dispatcher writes for a Job that ended without the runner's result. A pure
function, so every branch can be checked against the published JSON schema without a
cluster."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.messages import Action, RunMode
from contracts.results import ErrorKind, Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.executors.base import JobEnd
from dispatcher.kube.classify import JobEndReason

# Kubernetes reasons -> result error kinds the Scheduler can act on; any other: job_failed.
ERROR_KINDS: dict[str, ErrorKind] = {
    JobEndReason.DEADLINE_EXCEEDED: ErrorKind.DEADLINE_EXCEEDED,
    JobEndReason.OOM_KILLED: ErrorKind.OOM_KILLED,
    JobEndReason.EVICTED: ErrorKind.EVICTED,
    JobEndReason.ERR_IMAGE_PULL: ErrorKind.IMAGE_PULL,
    JobEndReason.IMAGE_PULL_BACK_OFF: ErrorKind.IMAGE_PULL,
    JobEndReason.INVALID_IMAGE_NAME: ErrorKind.IMAGE_PULL,
    JobEndReason.ERR_IMAGE_NEVER_PULL: ErrorKind.IMAGE_PULL,
    JobEndReason.IMAGE_INSPECT_ERROR: ErrorKind.IMAGE_PULL,
    JobEndReason.CREATE_CONTAINER_CONFIG_ERROR: ErrorKind.CONFIG_ERROR,
    JobEndReason.CREATE_CONTAINER_ERROR: ErrorKind.CONFIG_ERROR,
    JobEndReason.UNSCHEDULABLE: ErrorKind.UNSCHEDULABLE,
    JobEndReason.PENDING_TIMEOUT: ErrorKind.UNSCHEDULABLE,
    JobEndReason.POD_NOT_CREATED: ErrorKind.UNSCHEDULABLE,
    JobEndReason.JOB_DELETED: ErrorKind.JOB_DELETED,
    JobEndReason.ADMISSION_REJECTED: ErrorKind.ADMISSION_REJECTED,
    JobEndReason.DISRUPTED: ErrorKind.DISRUPTED,
    JobEndReason.CANCELLED: ErrorKind.CANCELLED,
}


def failure_result(end: JobEnd, now: datetime | None = None) -> ResultEntry:
    """The result for a Job that ended without the runner publishing one."""
    now = now or datetime.now(UTC)
    status = ResultStatus.FAILED
    if end.reason == JobEndReason.DEADLINE_EXCEEDED:
        status = ResultStatus.TIMED_OUT
    message = end.message
    if end.succeeded:
        message = "the runner exited successfully without publishing a result"
    kind = ERROR_KINDS.get(end.reason, ErrorKind.JOB_FAILED)
    action = Action(end.action) if end.action in {a.value for a in Action} else None
    mode = RunMode(end.mode) if end.mode in {m.value for m in RunMode} else None
    return ResultEntry(
        request_id=end.request_id, server_handle=end.server_handle, action=action, mode=mode,
        status=status, reported_by=Reporter.DISPATCHER, job_name=end.job_name,
        started_at=end.started_at, finished_at=now,
        duration_seconds=(now - end.started_at).total_seconds() if end.started_at else None,
        error=ResultError(kind=kind, message=f"{end.reason}: {message}"),
    )

