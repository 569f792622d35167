"""Builds the runner Job object for one message.

Secrets only ever appear as references (secretKeyRef / envFrom); the only values the
dispatcher copies into the Job are the message itself, the Job name and the public deploy key.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.exit_codes import ExitCode
from contracts.messages import ProvisionerMessage, RunMode
from dispatcher.naming import (
    ANNOTATION_MESSAGE,
    ANNOTATION_REPLICA,
    job_name_for,
    labels_for,
)
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

SCRATCH_PATH = "/scratch"
# The runner's documented verdict exit codes (the contract's ExitCode, all but SUCCESS).
RUNNER_VERDICT_EXIT_CODES = tuple(int(c) for c in ExitCode if c is not ExitCode.SUCCESS)
LABEL_VERSION = "app.kubernetes.io/version"
# When Kubernetes' deadline runs out, on the pod template and in the runner's environment
# through the downward API: the runner has no API access to read the Job's startTime.
ANNOTATION_DEADLINE_AT = "infra-service.io/deadline-at"
ENV_DEADLINE_AT = "JOB_DEADLINE_AT"


def deadline_at_after(seconds: int, now: datetime | None = None) -> str:
    """RFC 3339 UTC time ``seconds`` after now, whole seconds cut off. Kubernetes counts
    activeDeadlineSeconds from the Job's status.startTime (whole seconds too), which is
    never earlier than the Job's creation: so this instant is never later than Kubernetes'
    own deadline (up to the clock skew between this process and the control plane)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return (moment + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_version(image: str) -> str | None:
    """The runner image's tag as a label value (`repo:1.2.3` -> `1.2.3`); None for an image
    named only by digest or without a tag, whose version the name does not tell."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    value = re.sub(r"[^A-Za-z0-9._-]", "_", tag)[:63].strip("._-")
    return value or None


def pod_failure_policy() -> dict[str, Any]:
    """First, a pod the cluster disrupted (condition ``DisruptionTarget``: an eviction or a
    node drain, preemption, the taint manager, pod GC) is ignored: not counted against
    backoffLimit, the Job controller replaces it, within the Job's activeDeadlineSeconds. The
    runner, stopped by SIGTERM, publishes no result (it cannot know whether its pod is
    replaced); the dispatcher reports the Job's end (``disrupted``) if no later pod does.

    Then every exit code the runner documents as its own verdict fails the Job at once, so
    the Job's Failed condition reads ``PodFailurePolicy`` naming the container's exit code
    instead of ``BackoffLimitExceeded`` (the runner's termination message is on the pod).
    Other exits (a crash, a signal) fall through to backoffLimit, which is 0 anyway."""
    codes = list(RUNNER_VERDICT_EXIT_CODES)
    return {"rules": [
        # status is defaulted to "True" by the API server; stated for older validators.
        {"action": "Ignore",
         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "runner", "operator": "In", "values": codes},
            # Empty, not absent: the 1.25 and 1.26 OpenAPI schemas mark it required
            # (client-side validation, e.g. kubectl, refuses the Job without it); the API
            # server accepts an empty list beside onExitCodes.
            "onPodConditions": [],
        },
    ]}


def runner_env(message: ProvisionerMessage, job_name: str, public_key: str,
               deadline_seconds: int) -> dict[str, str]:
    """Environment every runner gets, whichever executor starts it."""
    return runner_env_values(message.to_json(), job_name, public_key, deadline_seconds)


def runner_env_values(message_json: str, job_name: str, public_key: str,
                      deadline_seconds: int) -> dict[str, str]:
    return {
        "PROVISIONER_MESSAGE": message_json,
        "JOB_NAME": job_name,
        "ORCHESTRATOR_SSH_PUBLIC_KEY": public_key,
        # The runner ends its play before Kubernetes kills the pod, so it reports itself.
        "JOB_ACTIVE_DEADLINE_SECONDS": str(deadline_seconds),
    }


@dataclass(frozen=True)
class JobFields:
    """What differs from one message's Job to the next."""

    name: str
    handle: str
    request_id: str
    action: str
    message_json: str
    # Empty: now + activeDeadlineSeconds, computed when the body is built or rendered.
    deadline_at: str = ""
    mode: str = RunMode.RUN.value  # the mode label: "plan" for a plan's Job

    @classmethod
    def of(cls, message: ProvisionerMessage, job_name: str | None = None,
           deadline_at: str = "") -> JobFields:
        return cls(job_name or job_name_for(message), message.server_handle,
                   message.request_id or "", message.action.value, message.to_json(),
                   deadline_at, message.mode.value)


def build_job(message: ProvisionerMessage, settings: DispatcherSettings,
              template: JobTemplateSettings, job_name: str | None = None,
              deadline_at: str = "") -> dict[str, Any]:
    return job_body(JobFields.of(message, job_name, deadline_at), settings, template)


class JobBodyTemplate:
    """The Job body serialised once per settings; per message only its own fields are
    JSON-encoded into the gaps. Serialising the whole body for every Job was the largest
    CPU cost of a burst after the HTTP call itself. ``render`` equals
    ``json.dumps(build_job(...), separators=(",", ":"))`` for the same fields (a test holds
    it to that). The deadline instant is a gap like the others: a field left empty is
    filled at render time (now + activeDeadlineSeconds), never frozen at construction."""

    def __init__(self, settings: DispatcherSettings, template: JobTemplateSettings) -> None:
        # Sentinels no setting can contain (NUL is refused in labels, env and annotations
        # by the API anyway); each is a JSON string in the serialised body.
        marks = JobFields(*(f"\x00{field}\x00" for field in JobFields.__dataclass_fields__))
        text = json.dumps(job_body(marks, settings, template), separators=(",", ":"))
        self._parts: list[str | int] = []
        pattern = "|".join(re.escape(json.dumps(m)) for m in astuple(marks))
        position = 0
        order = [json.dumps(m) for m in astuple(marks)]
        for found in re.finditer(pattern, text):
            self._parts.append(text[position:found.start()])
            self._parts.append(order.index(found.group(0)))
            position = found.end()
        self._parts.append(text[position:])
        self._deadline_seconds = template.active_deadline_seconds
        # The deadline of the current whole second, kept: a burst renders hundreds of Jobs
        # a second, and formatting the instant was a visible share of each render.
        self._deadline_second = -1
        self._deadline_text = ""

    def render(self, fields: JobFields) -> bytes:
        values = [json.dumps(getattr(fields, name)) for name in _FIELD_NAMES]
        if not fields.deadline_at:
            values[_DEADLINE_INDEX] = json.dumps(self._deadline_now())
        return "".join(p if isinstance(p, str) else values[p] for p in self._parts).encode()

    def _deadline_now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._deadline_second:
            self._deadline_text = deadline_at_after(
                self._deadline_seconds, datetime.fromtimestamp(second, UTC))
            self._deadline_second = second
        return self._deadline_text


# The order of JobFields' gaps in a rendered body (astuple would deep-copy every value).
_FIELD_NAMES = tuple(JobFields.__dataclass_fields__)
_DEADLINE_INDEX = _FIELD_NAMES.index("deadline_at")


def container_env(fields: JobFields, settings: DispatcherSettings,
                  template: JobTemplateSettings) -> list[dict[str, Any]]:
    """The runner's environment: the message and its deadline, the scratch directory, the
    operators' variables, and Secrets as references only."""
    env: list[dict[str, Any]] = [
        {"name": k, "value": v}
        for k, v in runner_env_values(fields.message_json, fields.name,
                                      settings.orchestrator_ssh_public_key,
                                      template.active_deadline_seconds).items()
    ]
    env += [
        # The emptyDir itself: subdirectories would not exist on a fresh volume.
        {"name": "RUNNER_SCRATCH_DIR", "value": SCRATCH_PATH},
        {"name": "HOME", "value": SCRATCH_PATH},
        {"name": "TMPDIR", "value": SCRATCH_PATH},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_DEADLINE_AT, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{ANNOTATION_DEADLINE_AT}']"}}},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(template.env.items())]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {
            "name": ref.secret, "key": ref.key, "optional": ref.optional}}}
        for k, ref in sorted(template.secret_env.items())
        if ref.key or not ref.optional  # an optional reference without a key is left out
    ]
    return env


def runner_container(env: list[dict[str, Any]], template: JobTemplateSettings
                     ) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "runner",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "args": template.args,
        "env": env,
        "envFrom": [{"secretRef": {"name": s}} for s in template.env_from_secrets],
        "resources": template.resources,
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
        # The runner writes `<kind>: <summary>` to /dev/termination-log; if it died before
        # writing one, the kubelet takes the last lines of the log instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": template.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if template.command:
        container["command"] = template.command
    return container


def pod_spec(container: dict[str, Any], template: JobTemplateSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": template.run_as_user,
            "runAsGroup": template.run_as_user,
            "fsGroup": template.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": template.scratch_size_limit}}],
    }
    if template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        spec["nodeSelector"] = template.node_selector
    if template.tolerations:
        spec["tolerations"] = template.tolerations
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in template.image_pull_secrets]
    return spec


def job_body(fields: JobFields, settings: DispatcherSettings,
             template: JobTemplateSettings) -> dict[str, Any]:
    deadline_at = fields.deadline_at or deadline_at_after(template.active_deadline_seconds)
    own = labels_for(fields.handle, fields.request_id, fields.action, settings.instance,
                     fields.mode)
    if version := image_version(template.image):
        own[LABEL_VERSION] = version
    # Operators' pod labels and annotations first: the dispatcher's own win on a clash (its
    # labels select the pods, its annotation is the runner's deadline).
    pod_labels = {**template.labels, **template.pod_labels, **own}
    pod_annotations = {**template.pod_annotations, ANNOTATION_DEADLINE_AT: deadline_at}
    container = runner_container(container_env(fields, settings, template), template)
    spec: dict[str, Any] = {
        "backoffLimit": 0,  # the runner retries SSH itself; a second pod would rerun the play
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "ttlSecondsAfterFinished": template.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations},
                     "spec": pod_spec(container, template)},
    }
    if template.pod_failure_policy:
        # Requires restartPolicy Never (set above); GA since Kubernetes 1.31, on by default
        # since 1.26.
        spec["podFailurePolicy"] = pod_failure_policy()
    annotations = {**template.annotations, ANNOTATION_MESSAGE: fields.message_json,
                   ANNOTATION_REPLICA: settings.replica_id}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        # No ownerReferences: deleting or upgrading the dispatcher never cascades to Jobs.
        "metadata": {"name": fields.name, "labels": {**template.labels, **own},
                     "annotations": annotations},
        "spec": spec,
    }
