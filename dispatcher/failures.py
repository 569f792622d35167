"""The results the dispatcher writes itself: a Job that ended without the runner's result,
and a message it rejected. Pure functions, so every branch can be checked against the
published JSON schema without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from contracts.messages import Action, InvalidMessage, ProvisionerMessage
from contracts.results import ErrorKind, Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.executors.base import JobEnd


class JobEndReason(StrEnum):
    """The Kubernetes reasons for a Job's end the dispatcher knows in advance. JobEnd.reason
    stays a plain string: Kubernetes may name others (a container's terminated reason), and
    they are reported as job_failed."""

    COMPLETED = "Completed"
    ERROR = "Error"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    INVALID_IMAGE_NAME = "InvalidImageName"
    ERR_IMAGE_PULL = "ErrImagePull"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    IMAGE_INSPECT_ERROR = "ImageInspectError"
    UNSCHEDULABLE = "Unschedulable"
    PENDING_TIMEOUT = "PendingTimeout"  # the dispatcher's own: the pod never started
    POD_NOT_CREATED = "PodNotCreated"  # the dispatcher's own: no pod appeared
    JOB_DELETED = "JobDeleted"  # the dispatcher's own: the Job vanished before it ended
    POD_FAILURE_POLICY = "PodFailurePolicy"  # a runner verdict exit code failed the Job
    # The dispatcher's own: the Job controller's FailedCreate Event says the API server
    # refused the pod at admission (PodSecurity, ResourceQuota, a policy webhook).
    ADMISSION_REJECTED = "AdmissionRejected"
    # The dispatcher's own: the Job ended without the runner's result and its last pod
    # carried the DisruptionTarget condition (eviction, preemption, node drain).
    DISRUPTED = "Disrupted"
    # The dispatcher's own: the runner exited with its cancelled code (SIGTERM, pod deleted).
    CANCELLED = "Cancelled"


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
    return ResultEntry(
        request_id=end.request_id, server_handle=end.server_handle, action=action,
        status=status, reported_by=Reporter.DISPATCHER, job_name=end.job_name,
        started_at=end.started_at, finished_at=now,
        duration_seconds=(now - end.started_at).total_seconds() if end.started_at else None,
        error=ResultError(kind=kind, message=f"{end.reason}: {message}"),
    )


def rejection_result(invalid: InvalidMessage, message: ProvisionerMessage | None,
                     handle: str | None, request_id: str | None,
                     now: datetime | None = None) -> ResultEntry:
    """The result for a dead-lettered message whose handle or request id could be read."""
    return ResultEntry(
        request_id=request_id, server_handle=handle,
        action=message.action if message else None,
        status=ResultStatus.REJECTED, reported_by=Reporter.DISPATCHER,
        finished_at=now or datetime.now(UTC),
        error=ResultError(kind=ErrorKind.INVALID_MESSAGE, message=str(invalid)),
    )
