"""Builds the runner Job object for one message.

Secrets only ever appear as references (secretKeyRef / envFrom); the only values the
dispatcher copies into the Job are the message itself, the Job name and the public deploy key.
"""

from __future__ import annotations

import re
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
LABEL_VERSION = "app.kubernetes.io/version"


def image_version(image: str) -> str | None:
    """The runner image's tag as a label value (`repo:1.2.3` -> `1.2.3`); None for an image
    named only by digest or without a tag, whose version the name does not tell."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    value = re.sub(r"[^A-Za-z0-9._-]", "_", tag)[:63].strip("._-")
    return value or None


def runner_env(message: ProvisionerMessage, job_name: str, public_key: str,
               deadline_seconds: int) -> dict[str, str]:
    """Environment every runner gets, whichever executor starts it."""
    return {
        "PROVISIONER_MESSAGE": message.to_json(),
        "JOB_NAME": job_name,
        "ORCHESTRATOR_SSH_PUBLIC_KEY": public_key,
        # The runner ends its play before Kubernetes kills the pod, so it reports itself.
        "JOB_ACTIVE_DEADLINE_SECONDS": str(deadline_seconds),
    }


def build_job(message: ProvisionerMessage, settings: DispatcherSettings,
              template: JobTemplateSettings) -> dict[str, Any]:
    name = job_name_for(message)
    labels = {**template.labels, **job_labels(message, settings.instance)}
    if version := image_version(template.image):
        labels[LABEL_VERSION] = version
    annotations = {
        **template.annotations,
        ANNOTATION_MESSAGE: message.to_json(),
        ANNOTATION_REPLICA: settings.replica_id,
    }
    env: list[dict[str, Any]] = [
        {"name": k, "value": v}
        for k, v in runner_env(message, name, settings.orchestrator_ssh_public_key,
                               template.active_deadline_seconds).items()
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
