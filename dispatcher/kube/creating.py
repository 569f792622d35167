"""Creating Jobs: 201 is created, 409 AlreadyExists is success (a redelivery)."""

from __future__ import annotations

from typing import Any

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from dispatcher.executors.base import LaunchRejected, TransientLaunchError
from dispatcher.kube.client import KubeClient
from dispatcher.kube.errors import describe


async def create_job(kube: KubeClient, namespace: str, body: dict[str, Any]) -> bool:
    """True if created now, False if a Job of that name already existed."""
    try:
        await kube.call("create", kube.batch.create_namespaced_job, namespace, body,
                        _preload_content=False)
    except ApiException as exc:
        if exc.status == 409:
            return False
        failure = describe(exc)
        text = f"creating Job {body['metadata']['name']}: HTTP {failure.status} " \
               f"{failure.reason}: {failure.message}"
        if failure.retryable:
            raise TransientLaunchError(text, failure.retry_after) from None
        raise LaunchRejected(text) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        failure = describe(exc)
        raise TransientLaunchError(f"creating Job: {failure.reason}: {failure.message}") from None
    return True
