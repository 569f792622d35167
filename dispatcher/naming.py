"""Deterministic Job names and the labels/annotations SREs select Jobs by."""

from __future__ import annotations

import hashlib
import re

from contracts.messages import ProvisionerMessage, RunMode

LABEL_PREFIX = "infra-service.io"
LABEL_HANDLE = f"{LABEL_PREFIX}/server-handle"
LABEL_REQUEST = f"{LABEL_PREFIX}/request-id"
LABEL_ACTION = f"{LABEL_PREFIX}/action"
# "plan" for a plan's Job (check mode, nothing changed), "run" for every other.
LABEL_MODE = f"{LABEL_PREFIX}/mode"
ANNOTATION_MESSAGE = f"{LABEL_PREFIX}/message"
ANNOTATION_REPLICA = f"{LABEL_PREFIX}/dispatched-by"
# Set when the dispatcher stopped a stuck Job: "<reason>: <message from the pod>".
ANNOTATION_STOPPED = f"{LABEL_PREFIX}/stopped"
MANAGED_BY = "infra-service-dispatcher"

JOB_NAME_PREFIX = "prov"
# A plan's Job says so in the NAME column of `kubectl get jobs`; the name still matches
# `prov-[a-z0-9-]+-<12 hex>`, which alert routes select runner Jobs by.
PLAN_JOB_NAME_PREFIX = f"{JOB_NAME_PREFIX}-{RunMode.PLAN.value}"
_HANDLE_PART = 40  # prefix(4) + '-' + 40 + '-' + hash(12) = 58 <= 63
_NOT_SLUG = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")


def job_name(server_handle: str, request_id: str, *, plan: bool = False) -> str:
    """A DNS-1123 label (<= 63 chars) that is a pure function of the request id (and of
    whether the message asks for a plan).

    The handle part is for humans only; the request-id hash makes it unique, so a
    redelivered message maps to the same Job and its create answers 409.
    """
    prefix = PLAN_JOB_NAME_PREFIX if plan else JOB_NAME_PREFIX
    room = _HANDLE_PART - (len(prefix) - len(JOB_NAME_PREFIX))  # the name stays <= 58
    slug = _NOT_SLUG.sub("-", server_handle.lower())
    slug = _DASHES.sub("-", slug).strip("-")[:room].rstrip("-") or "server"
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:12]
    return f"{prefix}-{slug}-{digest}"


def job_name_for(message: ProvisionerMessage) -> str:
    if message.request_id is None:
        raise ValueError("message has no request_id yet; assign identity before naming its Job")
    return job_name(message.server_handle, message.request_id, plan=message.plan)


def selector_labels(instance: str) -> dict[str, str]:
    """Labels that identify every Job (and Pod) one dispatcher installation owns."""
    return {
        "app.kubernetes.io/name": "infra-service-runner",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(instance: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(instance).items())


def labels_for(handle: str, request_id: str, action: str, instance: str,
               mode: str = RunMode.RUN.value) -> dict[str, str]:
    return {
        **selector_labels(instance),
        "app.kubernetes.io/component": "runner",
        "app.kubernetes.io/part-of": "infra-service",
        LABEL_HANDLE: handle,
        LABEL_REQUEST: request_id,
        LABEL_ACTION: action,
        LABEL_MODE: mode,
    }
