"""The result entry contract: what lands on ``provisioner:results`` for every request.

Exactly one entry per request id. The runner normally writes it; the dispatcher writes it
when the runner could not (the Job failed before or without reporting, or the message was
rejected). Both go through ``publish_result`` so that whoever comes second is a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.messages import Action, RunMode

SCHEMA_VERSION = 1
OUTPUT_TAIL_LIMIT = 4000
# A plan lists at most this many tasks, each diff summary at most this many characters: a
# result stays well under a megabyte whatever the play (the counts cover every task).
PLAN_TASK_LIMIT = 100
PLAN_DIFF_LIMIT = 1500
PLAN_TEXT_LIMIT = 300  # a task or role name, the reason of an unknown verdict


class ResultStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    # A plan (the message's ``plan``) ran to its end: nothing was changed, and ``plan`` says
    # what a run would change. Says nothing about the server's health.
    PLANNED = "planned"


class Reporter(StrEnum):
    RUNNER = "runner"
    DISPATCHER = "dispatcher"


class ErrorKind(StrEnum):
    """Machine-readable class of a failed result: what the Scheduler acts on.

    Either side: invalid_message (the message failed validation; status rejected),
    config_error (the runner's configuration, or a Secret key its pod lacks),
    deadline_exceeded (the Job's deadline, or a runner phase reaching it).
    Runner: unknown_server (no row for the handle), server_busy (another run holds the
    server's row lock), database_unavailable (PostgreSQL unreachable), provider_error (the
    provider API failed the reinstall), ssh_unreachable (no SSH answer, or Ansible found the
    host unreachable), ssh_auth_failed (the login was refused), host_key_mismatch (the host
    key differs from the recorded one), deploy_key_failed (installing the SSH keys failed),
    play_failed (an Ansible task failed: task, host, output tail), play_timeout (the plays ran
    past their budget), lock_lost (the row lock was lost
    during the run), runner_environment (the runner's pod could not provide what a run needs,
    such as its ssh-agent; nothing was changed, retry), internal (a bug; the message names the
    exception).
    Dispatcher, for a Job that ended without the runner's result: job_failed (the pod
    failed), image_pull (the runner image could not be pulled), unschedulable (no node took
    the pod in time), oom_killed, evicted, job_deleted, cancelled (the runner was stopped by
    SIGTERM, its pod deleted, and no disruption explains it; the server's status says where
    it stopped), admission_rejected (the API server refused the Job's pod at admission:
    PodSecurity, ResourceQuota, a policy webhook; the message is the API's; fix the
    namespace's policy or quota, or the runner settings, then send the message again),
    disrupted (the cluster evicted or preempted the pod, a node drain for instance, and the
    Job ended before a replacement pod reported; the message names the node and the
    disruption's reason; the play may have stopped midway, send the message again).
    """

    INVALID_MESSAGE = "invalid_message"
    CONFIG_ERROR = "config_error"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNKNOWN_SERVER = "unknown_server"
    SERVER_BUSY = "server_busy"
    DATABASE_UNAVAILABLE = "database_unavailable"
    PROVIDER_ERROR = "provider_error"
    SSH_UNREACHABLE = "ssh_unreachable"
    SSH_AUTH_FAILED = "ssh_auth_failed"
    HOST_KEY_MISMATCH = "host_key_mismatch"
    DEPLOY_KEY_FAILED = "deploy_key_failed"
    PLAY_FAILED = "play_failed"
    PLAY_TIMEOUT = "play_timeout"
    CANCELLED = "cancelled"
    LOCK_LOST = "lock_lost"
    RUNNER_ENVIRONMENT = "runner_environment"
    INTERNAL = "internal"
    JOB_FAILED = "job_failed"
    IMAGE_PULL = "image_pull"
    UNSCHEDULABLE = "unschedulable"
    OOM_KILLED = "oom_killed"
    EVICTED = "evicted"
    JOB_DELETED = "job_deleted"
    ADMISSION_REJECTED = "admission_rejected"
    DISRUPTED = "disrupted"


class ResultError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ErrorKind = Field(description="Machine-readable class of the failure")
    message: str = Field(description="What failed and what to do about it (no secret values)")
    task: str | None = Field(default=None, description="Ansible task that failed")
    host: str | None = Field(default=None, description="Ansible host the task failed on")
    return_code: int | None = Field(default=None, description="Module or process return code")
    output_tail: str | None = Field(
        default=None, max_length=OUTPUT_TAIL_LIMIT, description="Bounded tail of stderr/stdout"
    )


class PlayRecap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


class PlanVerdict(StrEnum):
    """What a plan says about one task."""

    WOULD_CHANGE = "would_change"  # the module checked and would change the server
    # Check mode cannot tell: the task was skipped because it cannot run in check mode (a
    # command), failed because an earlier task did not really run (a package not installed),
    # reported a change it could not check (a command that would have run), or is a handler
    # such a task would notify.
    UNKNOWN = "unknown"


class PlannedTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(max_length=PLAN_TEXT_LIMIT, description="The task's name")
    role: str | None = Field(default=None, max_length=PLAN_TEXT_LIMIT,
                             description="The role the task belongs to (null: the play's own)")
    verdict: PlanVerdict
    reason: str | None = Field(
        default=None, max_length=PLAN_TEXT_LIMIT,
        description="Why the verdict is unknown (secrets masked); null for would_change")
    diff: str | None = Field(
        default=None, max_length=PLAN_DIFF_LIMIT,
        description="What would change, as Ansible's diff mode shows it (files as unified "
        "diffs, states as before -> after), secrets masked, cut to its first "
        f"{PLAN_DIFF_LIMIT} characters; null when the module shows none")


class Plan(BaseModel):
    """What a run would change, from the play in check and diff mode."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[PlannedTask] = Field(
        default_factory=list, max_length=PLAN_TASK_LIMIT,
        description=f"Tasks that would change or cannot tell, in play order (at most "
        f"{PLAN_TASK_LIMIT}); empty on a server a run would not change")
    would_change: int = Field(default=0, ge=0,
                              description="Tasks that would change, listed or not")
    unknown: int = Field(default=0, ge=0, description="Tasks check mode cannot tell, listed or not")
    truncated: bool = Field(default=False,
                            description="More tasks than the list holds; the counts cover all")


class ResultEntry(BaseModel):
    """The outcome of one ProvisionerMessage."""

    model_config = ConfigDict(extra="forbid", title="ProvisionerResult")

    schema_version: int = SCHEMA_VERSION
    request_id: str | None = Field(description="The message's request id (null if unreadable)")
    server_handle: str | None = Field(description="The server (null if unreadable)")
    action: Action | None = None
    mode: RunMode | None = Field(
        default=None,
        description="plan when the message asked for a plan (whatever the status: a plan "
        "that could not run fails like a run), run otherwise; null when the message could "
        "not be read",
    )
    status: ResultStatus
    reported_by: Reporter
    job_name: str | None = None
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime
    duration_seconds: float | None = Field(default=None, ge=0)
    error: ResultError | None = None
    recap: PlayRecap | None = None
    details: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="Facts reported by the play (e.g. freed_bytes, docker_restarted)",
    )
    ssh_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="The server's SSH port after the run, as stored in the servers table: "
        "the port the runner connected on, or the one the play moved sshd to (null when the "
        "run did not get as far as the server)",
    )
    ssh_port_changed: bool | None = Field(
        default=None,
        description="True when the play moved sshd and ssh_port is the new port",
    )
    plan: Plan | None = Field(
        default=None,
        description="For a plan (status planned): the tasks a run would change or that "
        "check mode cannot tell; null for a run",
    )

    def to_json(self) -> str:
        return self.model_dump_json()


def now() -> datetime:
    return datetime.now(UTC)
