"""One end, two handlers: the ends loop and the reconciler may meet the same request at
once (a stuck Job being stopped fails with DeadlineExceeded while its stuck end is still
being reported). The handler in progress reports and counts it; the other leaves it.
Real Redis, the real API server and Job controller as the dispatcher's ServiceAccount through
the fault proxy (a slow patch), the real executor."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.messages import ProvisionerMessage
from dispatcher.app import build_executor
from dispatcher.dispatch_state import DispatchState
from dispatcher.ends import Ends
from dispatcher.executors.base import JobEnd
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.naming import job_name_for
from dispatcher.observability.metrics import Metrics
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from dispatcher.store.queue import Acquisition, QueueStore
from dispatcher.store.retry import RedisRetry
from tests.support.dispatch import wait_until
from tests.support.kube_env import KubeEnv as Kube


@pytest.fixture
def k8s(kube_env: Kube) -> Kube:
    return kube_env


async def test_an_end_being_handled_is_left_to_its_handler(
        k8s: Kube, redis_client: aioredis.Redis, keys: Keys) -> None:
    settings = DispatcherSettings(instance="infra-service", namespace=k8s.namespace,
                                  kubeconfig=str(k8s.kubeconfig))
    metrics = Metrics()
    env = k8s.dispatcher_env()  # the runner pod goes to the status node: nothing runs it
    template = JobTemplateSettings(
        node_selector=json.loads(env["DISPATCHER_JOB_NODE_SELECTOR"]),
        tolerations=json.loads(env["DISPATCHER_JOB_TOLERATIONS"]))
    executor, _ = build_executor(settings, template, metrics)
    assert isinstance(executor, KubernetesExecutor)
    store = QueueStore(redis_client, keys, "r1")
    message = ProvisionerMessage(server_handle="srv-1", request_id="r1").with_identity()
    name = job_name_for(message)
    try:
        # A created Job holding its server's slot.
        await redis_client.lpush(keys.queue, message.to_json())
        [raw] = (await store.claim_many(1, 10, 4096, 100)).payloads
        await store.acquire_many([Acquisition(raw, raw.decode(), "srv-1", "r1", name)], 10)
        assert await executor.launch(message, name)
        await store.ack_many([(raw.decode(), "srv-1", "r1")])
        ends = Ends(executor, store, RedisRetry(metrics), redis_client, keys,
                    DispatchState(), metrics)
        # The stop takes a while (a slow API); meanwhile the reconciler meets the Job failed.
        k8s.inject(verb="patch", resource="jobs", delay=1.0, count=1)
        stuck = JobEnd(name, "srv-1", "r1", False, "ImagePullBackOff",
                       'Back-off pulling image "nope:1"', action="setup", stop_job=True)
        failed = JobEnd(name, "srv-1", "r1", False, "DeadlineExceeded",
                        "Job was active longer than specified deadline", action="setup")
        first = asyncio.create_task(ends.finish(stuck))

        async def stopping() -> bool:  # the stop's patch reached the (slow) API
            return ("patch", "jobs") in k8s.proxy.seen
        await wait_until(stopping, timeout=10, interval=0.01, what="the stop under way")
        await ends.finish(failed)
        await first
    finally:
        executor.kube.close()
    [result] = [json.loads(r) for r in await redis_client.lrange(keys.results, 0, -1)]
    assert (result["status"], result["error"]["kind"]) == ("failed", "image_pull")
    assert await redis_client.hlen(keys.inflight) == 0
    failed_by_reason = {
        reason: metrics.registry.get_sample_value("infra_service_kube_jobs_failed_total",
                                                  {"reason": reason}) or 0.0
        for reason in ("ImagePullBackOff", "DeadlineExceeded")}
    assert failed_by_reason == {"ImagePullBackOff": 1.0, "DeadlineExceeded": 0.0}
