"""Deleting a stuck Job together with its pods."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from dispatcher.kube.client import KubeClient


async def delete_job(kube: KubeClient, namespace: str, name: str) -> bool:
    """True if deleted now, False if it was already gone."""
    try:
        # Background propagation removes the pods too (the API default for Jobs orphans them).
        await kube.call("delete", kube.batch.delete_namespaced_job, name, namespace,
                        propagation_policy="Background", _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
