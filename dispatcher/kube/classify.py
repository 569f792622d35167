"""Reading Job and Pod objects: is the run over, and why?

Pure functions over the API's JSON, so every Kubernetes failure mode is unit-testable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from contracts.exit_codes import ExitCode


class JobEndReason(StrEnum):
    """The reasons for a Job's end known in advance: Kubernetes' own and the ones this
    layer names itself. A JobEnd's reason stays a plain string: Kubernetes may name others
    (a container's terminated reason), and they are reported as job_failed."""

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


class Condition(StrEnum):
    """The Job and Pod condition types read here."""

    COMPLETE = "Complete"
    FAILED = "Failed"
    DISRUPTION_TARGET = "DisruptionTarget"
    POD_SCHEDULED = "PodScheduled"


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# What every watch event is compared with, as module globals: on Python 3.11 reading an
# enum member off its class is several times slower, and these run for each event.
_COMPLETE, _FAILED = Condition.COMPLETE, Condition.FAILED
_DISRUPTION_TARGET, _POD_SCHEDULED = Condition.DISRUPTION_TARGET, Condition.POD_SCHEDULED
_PENDING = PodPhase.PENDING
_DEADLINE_EXCEEDED = JobEndReason.DEADLINE_EXCEEDED

# A pod in one of these phases got past Pending: its runner started.
STARTED_PHASES = (PodPhase.RUNNING, PodPhase.SUCCEEDED)


class AdmissionCause(StrEnum):
    """Why the API server refused a runner pod at admission
    (infra_service_pod_admission_rejections_total{cause})."""

    POD_SECURITY = "pod_security"
    QUOTA = "quota"
    POLICY = "policy"
    SERVICE_ACCOUNT = "service_account"
    OTHER = "other"

# Waiting reasons that never resolve on their own (Airflow treats the same set as fatal).
FATAL_WAITING = {JobEndReason.CREATE_CONTAINER_CONFIG_ERROR,
                 JobEndReason.CREATE_CONTAINER_ERROR, JobEndReason.INVALID_IMAGE_NAME,
                 JobEndReason.IMAGE_INSPECT_ERROR, JobEndReason.ERR_IMAGE_NEVER_PULL}
# Image pulls can be transient (registry hiccup): fatal only after a grace period.
PULL_WAITING = {JobEndReason.ERR_IMAGE_PULL, JobEndReason.IMAGE_PULL_BACK_OFF}


# The Job controller's Event when it could not create a pod ("Error creating: <API error>").
FAILED_CREATE = "FailedCreate"
FAILED_CREATE_PREFIX = "Error creating: "
# A pod whose ServiceAccount does not exist is refused by the ServiceAccount admission
# plugin. In a namespace created moments ago its `default` account trails it, and a deploy
# may create the runner's account just after the dispatcher starts: the Job controller
# retries the pod (after 1, 2, 4, 8 s...), so the refusal counts once it has lasted this long.
SERVICE_ACCOUNT_GRACE_SECONDS = 10.0
_MISSING_ACCOUNT = re.compile(r"error looking up service account ([^/\s]+)/([^:\s]+)")
ADMISSION_CAUSES = tuple(AdmissionCause)


@dataclass(frozen=True)
class AdmissionRejection:
    """The API server refused a runner pod at admission: no retry of the same pod can
    pass until the namespace's policy or quota, or the runner settings, change."""

    cause: AdmissionCause
    message: str  # the API server's own words (what failed and why)

    @property
    def advice(self) -> str:
        return {
            AdmissionCause.POD_SECURITY:
                "the namespace's PodSecurity level refuses the runner pod: fix the runner "
                "settings (DISPATCHER_JOB_*, chart values runner.*) or the namespace's "
                "pod-security.kubernetes.io labels",
            AdmissionCause.QUOTA:
                "a ResourceQuota of the namespace refuses the runner pod: raise or remove "
                "the quota (kubectl describe quota), or lower the runner's resources",
            AdmissionCause.POLICY:
                "an admission webhook or policy refuses the runner pod: fix the policy or "
                "the runner settings it objects to",
            AdmissionCause.SERVICE_ACCOUNT: self._missing_account_advice(),
        }.get(self.cause, "fix what the message names (namespace policy, quota, service "
                          "account) or the runner settings")


    @property
    def passes_on_its_own(self) -> bool:
        """A refusal that may end without anyone acting (a ServiceAccount still being
        created): it counts once it has lasted SERVICE_ACCOUNT_GRACE_SECONDS."""
        return self.cause is AdmissionCause.SERVICE_ACCOUNT

    def _missing_account_advice(self) -> str:
        found = _MISSING_ACCOUNT.search(self.message)
        namespace, name = found.groups() if found else ("<namespace>", "<account>")
        return (f"the runner pod's ServiceAccount {name} does not exist: create it "
                f"(kubectl -n {namespace} create serviceaccount {name}) or name an existing "
                "one (DISPATCHER_JOB_SERVICE_ACCOUNT_NAME, chart value "
                "runner.serviceAccount.name)")


def admission_rejection(message: str) -> AdmissionRejection | None:
    """The API server's refusal of a pod (a FailedCreate Event's message, or the answer to
    a pod create), when it was refused at admission; None when the failure may pass on its
    own (a timeout, an internal error, the API server shutting down) or is the caller's own
    authorization (RBAC: the dispatcher may not create pods, even as a dry run)."""
    text = message.strip()
    if text.startswith(FAILED_CREATE_PREFIX):
        text = text[len(FAILED_CREATE_PREFIX):]
    if is_rbac_denial(text):
        return None
    if "violates PodSecurity" in text:
        return AdmissionRejection(AdmissionCause.POD_SECURITY, text)
    if "exceeded quota" in text or "failed quota" in text:
        return AdmissionRejection(AdmissionCause.QUOTA, text)
    if _MISSING_ACCOUNT.search(text):
        return AdmissionRejection(AdmissionCause.SERVICE_ACCOUNT, text)
    if ("admission webhook" in text and "denied the request" in text) or \
            ("ValidatingAdmissionPolicy" in text and "denied request" in text):
        return AdmissionRejection(AdmissionCause.POLICY, text)
    if " is forbidden: " in text:
        return AdmissionRejection(AdmissionCause.OTHER, text)
    return None


def is_rbac_denial(message: str) -> bool:
    """A 403 from authorization (RBAC), not from admission."""
    return " cannot create resource " in message


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(obj: dict[str, Any], kind: Condition) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            found: dict[str, Any] = cond
            return found
    return None


def finished_at(job: dict[str, Any]) -> datetime | None:
    """When the Job ended: completionTime when it completed, else the time its Failed
    condition became true."""
    status = job.get("status") or {}
    if status.get("completionTime"):
        return parse_time(status["completionTime"])
    failed = _condition(job, _FAILED)
    return parse_time(failed.get("lastTransitionTime")) if failed else None


def job_outcome(job: dict[str, Any], pods: list[dict[str, Any]]
                ) -> tuple[bool, str, str] | None:
    """(succeeded, reason, message) once the Job is finished, else None."""
    if _condition(job, _COMPLETE):
        return True, JobEndReason.COMPLETED, "runner completed"
    failed = _condition(job, _FAILED)
    if not failed:
        return None
    reason = failed.get("reason") or Condition.FAILED
    message = failed.get("message") or "Job failed"
    pod_reason = _pod_failure(pods)
    if pod_reason and reason != _DEADLINE_EXCEEDED:
        reason, message = pod_reason
    return False, reason, message


def awaits_pod_detail(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """A Job failed for its pod's sake, but the pod's end is not known yet.

    Jobs and pods arrive on two watch streams, so the Job's Failed condition can come
    first; classifying then would name the Job's reason (BackoffLimitExceeded,
    PodFailurePolicy) where a moment later the pod's (OOMKilled, Evicted, Error) is
    known. The caller waits a short grace for the pod, so one failure gets one reason.
    """
    failed = _condition(job, _FAILED)
    if not failed or _condition(job, _COMPLETE):
        return False
    return failed.get("reason") != _DEADLINE_EXCEEDED and _pod_failure(pods) is None


def _pod_failure(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("reason") == JobEndReason.EVICTED:
            return JobEndReason.EVICTED, status.get("message") or "pod evicted"
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if not term or term.get("exitCode", 0) == 0:
                continue
            if term.get("exitCode") == ExitCode.CANCELLED:
                return JobEndReason.CANCELLED, "the runner was stopped by SIGTERM (its pod was " \
                    "deleted) before it finished" + \
                    (f": {term['message']}" if term.get("message") else "")
            if term.get("reason") == JobEndReason.OOM_KILLED:
                return JobEndReason.OOM_KILLED, \
                    f"runner container {cs.get('name')} was OOMKilled; raise the Job's " \
                    "memory limit"
            return term.get("reason") or JobEndReason.ERROR, \
                f"runner exited with code {term.get('exitCode')}" + \
                (f": {term['message']}" if term.get("message") else "")
    return None


def disruption(pod: dict[str, Any]) -> str | None:
    """What disrupted the pod, naming its node, when it carries the DisruptionTarget
    condition (set by the Eviction API, scheduler preemption, the taint manager, pod GC or
    the kubelet's node-pressure and shutdown evictions), else None."""
    cond = _condition(pod, _DISRUPTION_TARGET)
    if cond is None:
        return None
    name = (pod.get("metadata") or {}).get("name") or "?"
    node = (pod.get("spec") or {}).get("nodeName")
    where = f"on node {node}" if node else "before it was bound to a node"
    why = cond.get("reason") or Condition.DISRUPTION_TARGET
    if cond.get("message"):
        why = f"{why}: {cond['message']}"
    return f"pod {name} {where} was disrupted ({why}); the Job ended before a " \
        "replacement pod reported"


def stuck_reason(pod: dict[str, Any], now: datetime, pull_grace: float,
                 pending_timeout: float) -> tuple[str, str] | None:
    """Why a pod that has not started will never start, or None while it may still."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, _PENDING):
        return None
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or now
    age = (now - created).total_seconds()
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        message = waiting.get("message") or reason or ""
        if reason in FATAL_WAITING:
            return reason, message
        if reason in PULL_WAITING and age >= pull_grace:
            return reason, f"{message} (still failing after {int(age)}s)"
    if age >= pending_timeout:
        for cond in status.get("conditions") or []:
            if cond.get("type") == _POD_SCHEDULED and cond.get("status") == "False":
                return cond.get("reason") or JobEndReason.UNSCHEDULABLE, \
                    f"{cond.get('message') or 'pod not scheduled'} (pending {int(age)}s)"
        return JobEndReason.PENDING_TIMEOUT, f"pod did not start within {int(age)}s"
    return None


def next_check(job: dict[str, Any], pods: list[dict[str, Any]], pull_grace: float,
               pending_timeout: float) -> float:
    """The earliest instant (epoch seconds) at which ``stuck_reason`` or ``job_without_pod``
    could answer differently without a new event: a grace or timeout running out. Reasons
    that need no waiting are judged when the pod's event arrives."""
    now = utcnow()
    waiting = [p for p in pods if (p.get("status") or {}).get("phase") in (None, _PENDING)]
    if not pods:
        created = parse_time((job.get("metadata") or {}).get("creationTimestamp")) or now
        return created.timestamp() + pending_timeout
    instants = []
    for pod in waiting:
        created = parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or now
        instants.append(created.timestamp() + pending_timeout)
        if any(((cs.get("state") or {}).get("waiting") or {}).get("reason") in PULL_WAITING
               for cs in (pod.get("status") or {}).get("containerStatuses") or []):
            instants.append(created.timestamp() + pull_grace)
    return min(instants, default=float("inf"))


def job_without_pod(job: dict[str, Any], now: datetime, pending_timeout: float
                    ) -> tuple[str, str] | None:
    """A Job whose pod was never created (quota, admission webhooks) is stuck too."""
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp")) or now
    if (now - created).total_seconds() < pending_timeout:
        return None
    return JobEndReason.POD_NOT_CREATED, "no pod was created for the Job within " \
        f"{int(pending_timeout)}s; see `kubectl describe job` events (quota, admission)"


def utcnow() -> datetime:
    return datetime.now(UTC)
