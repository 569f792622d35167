"""Creating Jobs: 201 is created, 409 AlreadyExists is success (a redelivery), 401 reloads
the credentials and is retried."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.client import KubeClient
from dispatcher.kube.errors import UNAUTHORIZED, JobCreateFailed, call_failed, describe
from dispatcher.naming import LABEL_REQUEST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPayload:
    """A Job body already serialised (see jobspec.JobBodyTemplate)."""

    name: str
    request_id: str
    payload: bytes


async def create_job(kube: KubeClient, namespace: str, body: dict[str, Any] | JobPayload,
                     dry_run: bool = False, after_lost_reply: bool = False) -> bool:
    """True if created by this call, or by an earlier call of ours whose reply was lost
    (``after_lost_reply``, and the existing Job carries our request-id label); False if
    the Job already existed (a redelivery: an earlier incarnation created it)."""
    if not isinstance(body, JobPayload):
        body = JobPayload(body["metadata"]["name"], body["metadata"]["labels"][LABEL_REQUEST],
                          json.dumps(body, separators=(",", ":")).encode())
    payload = body.payload
    path = f"/apis/batch/v1/namespaces/{quote(namespace, safe='')}/jobs"
    try:
        # Dry runs are counted apart: "create" responses are real Job creations.
        await kube.post("create_dry_run" if dry_run else "create", path, payload,
                        "dryRun=All" if dry_run else "")
    except ApiException as exc:
        if exc.status == 409:
            return after_lost_reply and await _is_ours(kube, namespace, body)
        failure = describe(exc)
        if failure.status == UNAUTHORIZED:
            reloaded = await asyncio.to_thread(kube.reload_credentials)
            log.warning("Kubernetes API answered 401 Unauthorized: credentials reloaded, "
                        "the message stays claimed and is retried (check the service "
                        "account token or kubeconfig if this persists)",
                        extra={"reloaded": reloaded})
        text = f"creating Job {body.name}: HTTP {failure.status} " \
               f"{failure.reason}: {failure.message}"
        # A 5xx may come after the write was stored (a timeout between API server and
        # etcd): the next 409 may then be our own Job.
        raise JobCreateFailed(text, failure, maybe_applied=failure.status >= 500) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        failure = describe(exc)
        raise JobCreateFailed(f"creating Job: {failure.reason}: {failure.message}", failure,
                              maybe_applied=True) from None
    return True


async def _is_ours(kube: KubeClient, namespace: str, body: JobPayload) -> bool:
    """A 409: the Job exists. Ours when it carries our request id (a create whose reply was
    lost, or a redelivery): it counts as created by us."""
    name = body.name
    try:
        response = await kube.call("get", kube.batch.read_namespaced_job, name, namespace,
                                   _preload_content=False)
        labels = (json.loads(response.data).get("metadata") or {}).get("labels") or {}
    except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        log.warning("Job exists; could not read it to tell whose it is",
                    extra={"job_name": name, "error": str(exc)[:300]})
        return False
    ours = labels.get(LABEL_REQUEST) == body.request_id
    if not ours:
        log.error("a Job with this name exists for another request; not creating it",
                  extra={"job_name": name, "request_id": body.request_id,
                         "other_request_id": labels.get(LABEL_REQUEST)})
    return ours


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    """The pod the Job controller would create for ``job``: its template, with the labels
    the controller adds (so label-based policies see what they will see)."""
    name = job["metadata"]["name"]
    template = job["spec"]["template"]
    meta = template.get("metadata") or {}
    labels = {**(meta.get("labels") or {}), "batch.kubernetes.io/job-name": name,
              "job-name": name}
    metadata: dict[str, Any] = {"generateName": f"{name[:57]}-", "labels": labels}
    if meta.get("annotations"):
        metadata["annotations"] = meta["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


async def dry_run_pod(kube: KubeClient, namespace: str, job: dict[str, Any]) -> None:
    """Create the Job's pod with ``dryRun=All``: admitted (PodSecurity, ResourceQuota,
    webhooks) like the Job controller's create, never stored. Raises KubeCallFailed."""
    payload = json.dumps(pod_of(job), separators=(",", ":")).encode()
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
    try:
        await kube.post("create_pod_dry_run", path, payload, "dryRun=All")
    except ApiException as exc:
        if exc.status == UNAUTHORIZED:
            await asyncio.to_thread(kube.reload_credentials)
        raise call_failed("creating the runner pod (dry run)", exc) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise call_failed("creating the runner pod (dry run)", exc) from None
