"""Builds the runner Job object for one message.

Secrets only ever appear as references (secretKeyRef / envFrom); the only values the
dispatcher copies into the Job are the message itself, the Job name and the public deploy key.
"""

from __future__ import annotations

from typing import Any

from dispatcher.messages import ProvisionerMessage
from dispatcher.naming import (
    ANNOTATION_MESSAGE,
    ANNOTATION_REPLICA,
    job_labels,
    job_name_for,
)
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

SCRATCH_PATH = "/scratch"


def runner_env(message: ProvisionerMessage, job_name: str, public_key: str,
               deadline_seconds: int, message_json: str | None = None) -> dict[str, str]:
    """Environment every runner gets, whichever executor starts it."""
    return {
        "PROVISIONER_MESSAGE": message_json or message.to_json(),
        "JOB_NAME": job_name,
        "ORCHESTRATOR_SSH_PUBLIC_KEY": public_key,
        # The runner ends its play before Kubernetes kills the pod, so it reports itself.
        "JOB_ACTIVE_DEADLINE_SECONDS": str(deadline_seconds),
    }


def build_job(message: ProvisionerMessage, settings: DispatcherSettings,
              template: JobTemplateSettings, job_name: str | None = None) -> dict[str, Any]:
    name = job_name or job_name_for(message)
    message_json = message.to_json()  # serialised once, used twice
    labels = {**template.labels, **job_labels(message, settings.instance)}
    annotations = {
        **template.annotations,
        ANNOTATION_MESSAGE: message_json,
        ANNOTATION_REPLICA: settings.replica_id,
    }
    env: list[dict[str, Any]] = [
        {"name": k, "value": v}
        for k, v in runner_env(message, name, settings.orchestrator_ssh_public_key,
                               template.active_deadline_seconds, message_json).items()
    ]
    env += [
        # The emptyDir itself: subdirectories would not exist on a fresh volume.
        {"name": "RUNNER_SCRATCH_DIR", "value": SCRATCH_PATH},
        {"name": "HOME", "value": SCRATCH_PATH},
        {"name": "TMPDIR", "value": SCRATCH_PATH},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(template.env.items())]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {
            "name": ref.secret, "key": ref.key, "optional": ref.optional}}}
        for k, ref in sorted(template.secret_env.items())
    ]
    container: dict[str, Any] = {
        "name": "runner",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "args": template.args,
        "env": env,
        "envFrom": [{"secretRef": {"name": s}} for s in template.env_from_secrets],
        "resources": template.resources,
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
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
    pod_spec: dict[str, Any] = {
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
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod_spec["nodeSelector"] = template.node_selector
    if template.tolerations:
        pod_spec["tolerations"] = template.tolerations
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in template.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        # No ownerReferences: deleting or upgrading the dispatcher never cascades to Jobs.
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": 0,  # the runner retries SSH itself; a second pod would rerun the play
            "activeDeadlineSeconds": template.active_deadline_seconds,
            "ttlSecondsAfterFinished": template.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
