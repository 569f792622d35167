"""kube/ raises its own JobCreateFailed; the Kubernetes executor decides what is transient
(TransientLaunchError, retried with the message kept) and what is refused for good
(LaunchRejected, dead-lettered). Against the real API server, as the dispatcher's
ServiceAccount through the fault proxy (tests/support/faultproxy.py), faults injected there."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from contracts.messages import ProvisionerMessage
from dispatcher.app import build_executor
from dispatcher.executors.base import LaunchRejected, TransientLaunchError
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.naming import job_name_for
from dispatcher.observability.metrics import Metrics
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.support.kube_env import KubeEnv as Kube


@pytest.fixture
def k8s(kube_env: Kube) -> Kube:
    return kube_env


@pytest.fixture
async def executor(k8s: Kube) -> AsyncIterator[KubernetesExecutor]:
    settings = DispatcherSettings(instance="infra-service", namespace=k8s.namespace,
                                  kubeconfig=str(k8s.kubeconfig))
    # The runner pods go to the status node only: nothing runs them.
    env = k8s.dispatcher_env()
    template = JobTemplateSettings(
        node_selector=json.loads(env["DISPATCHER_JOB_NODE_SELECTOR"]),
        tolerations=json.loads(env["DISPATCHER_JOB_TOLERATIONS"]))
    built, _ = build_executor(settings, template, Metrics())
    assert isinstance(built, KubernetesExecutor)
    yield built
    built.kube.close()


def _message(rid: str) -> tuple[ProvisionerMessage, str]:
    message = ProvisionerMessage(server_handle="srv-1", request_id=rid).with_identity()
    return message, job_name_for(message)


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, 2), (429, 1),
                                                      (403, None), (404, None), (401, None)])
async def test_passing_failures_are_transient(executor: KubernetesExecutor, k8s: Kube,
                                              status: int, retry_after: int | None) -> None:
    k8s.inject(verb="create", resource="jobs", status=status, retry_after=retry_after,
               count=1)
    message, name = _message(f"r-{status}")
    with pytest.raises(TransientLaunchError) as raised:
        await executor.launch(message, name)
    assert raised.value.retry_after == retry_after
    assert raised.value.maybe_applied == (status >= 500)
    assert f"HTTP {status}" in str(raised.value)
    assert await executor.launch(message, name) is True  # the retry creates it
    assert [j["metadata"]["name"] for j in k8s.jobs()] == [name]


async def test_a_refusal_no_retry_can_fix_is_rejected(executor: KubernetesExecutor,
                                                      k8s: Kube) -> None:
    k8s.inject(verb="create", resource="jobs", status=422, count=1,
               message="spec.template: Invalid value")
    message, name = _message("r-422")
    with pytest.raises(LaunchRejected, match="HTTP 422"):
        await executor.launch(message, name)
    assert k8s.jobs() == []


async def test_a_lost_reply_makes_the_next_conflict_our_own_create(
        executor: KubernetesExecutor, k8s: Kube) -> None:
    k8s.inject(verb="create", resource="jobs", drop=True, applied=True, count=1)
    message, name = _message("r-lost")
    with pytest.raises(TransientLaunchError) as raised:
        await executor.launch(message, name)
    assert raised.value.maybe_applied
    # The create was stored: the retry meets 409 and, the Job carrying our request id,
    # counts it as created by us.
    assert await executor.launch(message, name) is True
    assert len(k8s.jobs()) == 1


async def test_preflight_tells_a_refusal_from_no_answer(executor: KubernetesExecutor,
                                                        k8s: Kube) -> None:
    control = k8s
    control.inject(verb="create", resource="jobs", status=422, count=1,
                   message="spec.template.spec.containers[0].image: Required value")
    assert "Required value" in (await executor.preflight() or "")
    control.inject(verb="create", resource="jobs", status=503, count=1)
    with pytest.raises(TransientLaunchError):
        await executor.preflight()
    assert await executor.preflight() is None
