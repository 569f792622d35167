"""Stopping a Job the dispatcher gave up on, and telling Kubernetes why.

A stuck Job (its pod cannot start: a missing Secret key, an image that does not pull, no node
fits) is stopped, not deleted, so ``kubectl describe job`` still shows it and the reason.
The dispatcher shortens ``spec.activeDeadlineSeconds`` to 1: the Job controller then fails
the Job (condition ``DeadlineExceeded``), deletes its pod, and ``ttlSecondsAfterFinished``
removes the Job later like any finished one. Suspending it instead would also delete the pod,
but a suspended Job is not finished, so the TTL controller would never remove it.

Every failure the dispatcher reports itself is also recorded as an events.k8s.io/v1 Event
regarding the Job, with the reason and the pod's message, which ``kubectl describe job``
lists under Events.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.client import KubeClient
from dispatcher.kube.errors import call_failed
from dispatcher.naming import ANNOTATION_STOPPED

REPORTING_CONTROLLER = "infra-service.io/dispatcher"


class EventAction(StrEnum):
    """The ``action`` of the dispatcher's Events: what it did about the failure."""

    STOP_JOB = "StopJob"  # the Job was stuck: stopped, then reported
    REPORT_FAILURE = "ReportFailure"  # the Job ended without the runner's result: reported


NOTE_MAX = 1024  # the API server refuses longer notes
FIELD_MAX = 128


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


async def stop_job(kube: KubeClient, namespace: str, name: str, reason: str,
                   message: str) -> bool:
    """True if stopped now, False if the Job is already gone."""
    # A JSON patch: the generated client sends every patch body as application/json-patch+json.
    # Runner Jobs always carry annotations (the message), so "add" finds the map.
    key = ANNOTATION_STOPPED.replace("~", "~0").replace("/", "~1")
    patch = [
        {"op": "add", "path": f"/metadata/annotations/{key}",
         "value": _bounded(f"{reason}: {message}", NOTE_MAX)},
        {"op": "replace", "path": "/spec/activeDeadlineSeconds", "value": 1},
    ]
    try:
        await kube.call("patch", kube.batch.patch_namespaced_job, name, namespace, patch,
                        _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise call_failed(f"stopping Job {name}", exc) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise call_failed(f"stopping Job {name}", exc) from None
    return True


def failure_event(namespace: str, job: dict[str, Any], reason: str, message: str,
                  instance: str, action: EventAction) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    name = meta.get("name") or ""
    regarding = {"apiVersion": "batch/v1", "kind": "Job", "namespace": namespace,
                 "name": name}
    if meta.get("uid"):
        regarding["uid"] = meta["uid"]  # kubectl describe selects Events by the Job's uid
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        # Unique per Event without a read: the name is not what anyone selects by.
        "metadata": {"name": f"{name[:200]}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": _bounded(instance or "dispatcher", FIELD_MAX),
        "action": action,
        "reason": _bounded(reason or "Failed", FIELD_MAX),
        "type": "Warning",
        "note": _bounded(message, NOTE_MAX),
        "regarding": regarding,
    }


async def record_failure(kube: KubeClient, namespace: str, job: dict[str, Any], reason: str,
                         message: str, instance: str, action: EventAction) -> None:
    body = failure_event(namespace, job, reason, message, instance, action)
    try:
        await kube.call("create_event", kube.events.create_namespaced_event, namespace, body,
                        _preload_content=False)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise call_failed(f"recording an Event on Job {body['regarding']['name']}",
                          exc) from None
