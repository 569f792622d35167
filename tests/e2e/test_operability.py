"""What an SRE sees after a good run and a failed run of one server: the server's Jobs by
label, the runner's log of the failed run, the Events, the dispatcher's log lines and the
counts on /metrics, read the way an SRE reads them (label selectors, pod logs, a scrape).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from dispatcher.naming import (
    ANNOTATION_MESSAGE,
    ANNOTATION_REPLICA,
    LABEL_ACTION,
    LABEL_HANDLE,
    LABEL_REQUEST,
)
from tests.support.dispatch import message, metric_value
from tests.support.e2e import (
    Cluster,
    ServerDb,
    StartDispatcher,
    unique,
    wait_for,
    wait_for_results,
)
from tests.support.hosts import Host

pytestmark = pytest.mark.hosts

RUN_CONTEXT = ("server_handle", "request_id", "job_name")


def jobs_of_server(cluster: Cluster, handle: str) -> list[dict[str, Any]]:
    """kubectl get jobs -l infra-service.io/server-handle=<handle>"""
    listed = cluster.batch.list_namespaced_job(
        cluster.namespace, label_selector=f"{LABEL_HANDLE}={handle}", _preload_content=False)
    return json.loads(listed.data)["items"]


def job_log(cluster: Cluster, job_name: str) -> list[dict[str, Any]]:
    """kubectl logs job/<name>: the Job's pod by its job-name label, then its log."""
    pods = json.loads(cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector=f"job-name={job_name}",
        _preload_content=False).data)["items"]
    (pod,) = pods
    text = cluster.pod_log(pod["metadata"]["name"])
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_what_an_sre_sees(start_dispatcher: StartDispatcher, cluster: Cluster,
                                hosts: list[Host], server_db: ServerDb,
                                redis_client: aioredis.Redis) -> None:
    host, handle = hosts[0], unique("sre")
    good, bad = unique("req"), unique("req")
    server_db.register(handle, host.address, host.ssh_port)
    # Recovery succeeds; setup runs a play that fails.
    dispatcher = start_dispatcher(runner_env={"SETUP_PLAYBOOK": "playbooks/failing.yml"})
    await redis_client.lpush(Keys().queue, message(handle, good, is_recovery=True),
                             message(handle, bad))
    got = await wait_for_results(redis_client, [good, bad])
    assert (got[good]["status"], got[bad]["status"]) == ("succeeded", "failed"), got

    # 1. The server's Jobs, by label: one per request, named in the result, labelled for
    #    selection, with the message itself in an annotation.
    def both_finished() -> list[dict[str, Any]] | None:
        jobs = jobs_of_server(cluster, handle)
        done = [j for j in jobs if any(c["type"] in ("Complete", "Failed")
                                       for c in j["status"].get("conditions") or [])]
        return jobs if len(done) == 2 else None

    jobs = await wait_for(both_finished, timeout=60, what="both Jobs finished")
    by_request = {j["metadata"]["labels"][LABEL_REQUEST]: j for j in jobs}
    assert set(by_request) == {good, bad}
    for rid, action in ((good, "recovery"), (bad, "setup")):
        meta = by_request[rid]["metadata"]
        assert meta["name"] == got[rid]["job_name"]
        assert meta["labels"][LABEL_ACTION] == action
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "infra-service-dispatcher"
        assert meta["labels"]["app.kubernetes.io/name"] == "infra-service-runner"
        assert json.loads(meta["annotations"][ANNOTATION_MESSAGE])["request_id"] == rid
        assert meta["annotations"][ANNOTATION_REPLICA] == "r1"
    failed_job = by_request[bad]
    (condition,) = [c for c in failed_job["status"]["conditions"] if c["type"] == "Failed"]
    # The runner's exit code 10 (play failed) matches the podFailurePolicy: FailJob at once.
    assert condition["reason"] == "PodFailurePolicy"
    assert failed_job["status"]["failed"] == 1

    # 2. The runner's log of the failed run: JSON lines, each naming the server, the request
    #    and the Job; among them the failed task and the run's end with its error kind.
    bad_job = failed_job["metadata"]["name"]
    lines = job_log(cluster, bad_job)
    assert lines
    for line in lines:
        assert (line.get("server_handle"), line.get("request_id"), line.get("job_name")) == \
            (handle, bad, bad_job), line
    failures = [ln for ln in lines if ln.get("ansible_event") == "runner_on_failed"]
    assert [ln["task"] for ln in failures] == ["Format the data disk"]
    (end,) = [ln for ln in lines if ln["event"] == "run finished"]
    assert (end["status"], end["exit_code"], end["error_kind"]) == ("failed", 10, "play_failed")

    # 3. The Events of the failed Job (the Job controller's) and of its pod (the scheduler's
    #    and the node's; the stand-in records no Pulled for an image already present).
    assert {"SuccessfulCreate", "PodFailurePolicy"} <= set(cluster.event_reasons(bad_job))
    (pod,) = cluster.pods_of(bad_job)
    assert {"Scheduled", "Created", "Started"} <= \
        set(cluster.event_reasons(pod["metadata"]["name"]))

    # 4. The dispatcher's own log: JSON lines for each Job's creation and end, with context.
    events = dispatcher.log_events()
    for rid in (good, bad):
        job_name = by_request[rid]["metadata"]["name"]
        for what in ("Job created", "Job finished"):
            assert any(e["event"] == what and
                       tuple(e.get(k) for k in RUN_CONTEXT) == (handle, rid, job_name)
                       for e in events), f"no '{what}' line for {rid}"
    (finish,) = [e for e in events if e["event"] == "Job finished" and e["request_id"] == bad]
    assert (finish["succeeded"], finish["reason"]) == (False, "Error")

    # 5. The counts on /metrics, once the dispatcher has seen both ends.
    def counted() -> str | None:
        text = dispatcher.metrics()  # GET /metrics
        done = metric_value(text, "infra_service_kube_jobs_completed_total") + \
            metric_value(text, "infra_service_kube_jobs_failed_total", '{reason="Error"}')
        return text if done == 2 else None

    text = await wait_for(counted, timeout=60, what="both Job ends counted")
    assert metric_value(text, "infra_service_jobs_created_total") == 2
    assert metric_value(text, "infra_service_messages_dispatched_total") == 2
    assert metric_value(text, "infra_service_kube_jobs_completed_total") == 1
    assert metric_value(text, "infra_service_kube_jobs_failed_total", '{reason="Error"}') == 1
    assert metric_value(text, "infra_service_messages_parked_total") == 1  # the second waited
    assert metric_value(text, "infra_service_dispatch_latency_seconds_count") == 2
    assert metric_value(text, "infra_service_kube_api_responses_total",
                        '{code="201",verb="create"}') == 2
    # The cluster-wide gauges are read from Redis every DISPATCHER_METRICS_REFRESH_SECONDS,
    # so they may trail the counters by one refresh.
    gauges = ("infra_service_jobs_in_flight", "infra_service_queue_messages",
              "infra_service_parked_messages", "infra_service_dead_letter_messages")

    def drained() -> str | None:
        text = dispatcher.metrics()
        return text if all(metric_value(text, g) == 0 for g in gauges) else None

    text = await wait_for(drained, timeout=30, what=f"{gauges} back to 0")
    assert metric_value(text, "infra_service_ready") == 1
