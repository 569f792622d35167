"""The dispatcher as a process, through the real kubernetes client, against the real API
server and controllers (through the fault proxy, as a ServiceAccount with exactly its grants);
the runner pods are bound to a status node whose kubelet is the test."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException

from contracts.keys import Keys
from contracts.messages import parse_message
from contracts.reporting import publish_result
from contracts.results import Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.jobspec import build_job
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.support.dispatch import DispatcherProcess, message, metric_value, results, wait_until
from tests.support.kube_env import KubeEnv as Kube
from tests.support.services import RedisServer

SECRET_DB_PASSWORD = "db-Pa55-do-not-leak-7f3a"


@pytest.fixture
def k8s(kube_env: Kube) -> Kube:
    return kube_env


@pytest.fixture
def start(k8s: Kube, redis_srv: RedisServer, redis_client: aioredis.Redis, tmp_path: Path):
    started: list[DispatcherProcess] = []

    def start(replica: str = "r1", ready: bool = True, **env: str) -> DispatcherProcess:
        process = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            **k8s.dispatcher_env(),
            "DISPATCHER_HEARTBEAT_SECONDS": "0.5", "DISPATCHER_RECONCILE_SECONDS": "1",
            "DISPATCHER_ORPHAN_GRACE_SECONDS": "3", "DISPATCHER_API_RETRY_MAX_SECONDS": "1",
            # A secret in the dispatcher's own environment must never reach a Job.
            "DATABASE_PASSWORD": SECRET_DB_PASSWORD,
            "DISPATCHER_JOB_SECRET_ENV": json.dumps(
                {"DATABASE_PASSWORD": {"secret": "infra-db", "key": "password"}}),
            "DISPATCHER_JOB_ENV_FROM_SECRETS": '["infra-provider"]',
            "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
            **env,
        }, tmp_path / f"dispatcher-{len(started)}.log", replica=replica).start()
        started.append(process)
        if ready:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()


async def job_count(k8s: Kube, n: int) -> list[dict] | None:
    jobs = await asyncio.to_thread(k8s.jobs)
    return jobs if len(jobs) >= n else None


def job_for(k8s: Kube, rid: str) -> dict:
    matches = [j for j in k8s.jobs() if j["metadata"]["labels"][LABEL_REQUEST] == rid]
    assert len(matches) == 1, matches
    return matches[0]


async def result_for(redis: aioredis.Redis, keys: Keys, rid: str) -> dict | None:
    return next((r for r in await results(redis, keys) if r["request_id"] == rid), None)


async def runner_reports(redis: aioredis.Redis, keys: Keys, rid: str, handle: str) -> None:
    entry = ResultEntry(request_id=rid, server_handle=handle, status=ResultStatus.SUCCEEDED,
                        reported_by=Reporter.RUNNER, finished_at=datetime.now(UTC))
    assert await publish_result(redis, keys, entry)


async def test_job_carries_the_contract_and_no_secret(start, k8s: Kube, redis_client, keys,
                                                      redis_srv: RedisServer) -> None:
    dispatcher = start()
    await redis_client.lpush(keys.queue, message("web-7", "req-1", is_recovery=True))
    await wait_until(lambda: job_count(k8s, 1), what="Job")
    job = job_for(k8s, "req-1")
    assert job["metadata"]["labels"][LABEL_HANDLE] == "web-7"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "infra-db"
    assert json.loads(env["PROVISIONER_MESSAGE"]["value"])["is_recovery"] is True
    # Job names are what the real API server accepts.
    assert len(job["metadata"]["name"]) <= 63
    stored = k8s.everything()
    for secret in (SECRET_DB_PASSWORD, redis_srv.password):
        assert secret not in stored
        assert secret not in dispatcher.logs()


async def test_runner_result_is_the_only_result(start, k8s: Kube, redis_client, keys) -> None:
    start()
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    await wait_until(lambda: job_count(k8s, 1), what="Job")
    await runner_reports(redis_client, keys, "r1", "srv-1")
    await asyncio.to_thread(k8s.kubelet.succeed, k8s.namespace,
                            job_for(k8s, "r1")["metadata"]["name"])
    await wait_until(lambda: _slots_empty(redis_client, keys), what="slot released")
    got = await results(redis_client, keys)
    assert [(r["request_id"], r["reported_by"]) for r in got] == [("r1", "runner")]


async def test_runner_failures_are_counted_by_kind_and_timed(start, k8s: Kube, redis_client,
                                                             keys) -> None:
    dispatcher = start()
    await redis_client.lpush(keys.queue, message("srv-1", "r1", is_recovery=True))
    await wait_until(lambda: job_count(k8s, 1), what="Job")
    entry = ResultEntry(request_id="r1", server_handle="srv-1", status=ResultStatus.UNREACHABLE,
                        reported_by=Reporter.RUNNER, finished_at=datetime.now(UTC),
                        error=ResultError(kind="ssh_unreachable", message="port 22 closed"))
    assert await publish_result(redis_client, keys, entry)
    name = job_for(k8s, "r1")["metadata"]["name"]
    await asyncio.to_thread(k8s.kubelet.fail, k8s.namespace, name, 11, None,
                            "ssh_unreachable: port 22 closed")

    async def counted() -> str | None:
        text = await asyncio.to_thread(dispatcher.metrics)
        return text if sum(metric_value(text, "infra_service_kube_jobs_failed_total",
                                        f'{{reason="{r}"}}')
                           for r in _reasons(dispatcher)) else None

    metrics = await wait_until(counted, what="the Job end counted")
    assert metric_value(metrics, "infra_service_runs_failed_total",
                        '{action="recovery",kind="ssh_unreachable"}') == 1
    assert metric_value(metrics, "infra_service_runs_failed_total",
                        '{action="recovery",kind="job_failed"}') == 0
    assert metric_value(metrics, "infra_service_job_duration_seconds_count",
                        '{action="recovery",status="unreachable"}') == 1
    # Measured from the Job's startTime to its Failed condition (whole seconds in the API).
    assert metric_value(metrics, "infra_service_job_duration_seconds_bucket",
                        '{action="recovery",le="60.0",status="unreachable"}') == 1
    # The Job failed through podFailurePolicy; the pod's reason and message are what
    # infra_service_kube_jobs_failed_total and the logs carry.
    job = job_for(k8s, "r1")
    assert [c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"] == [
        "PodFailurePolicy"]


async def _slots_empty(redis: aioredis.Redis, keys: Keys) -> bool:
    return await redis.hlen(keys.inflight) == 0


def _config_error(k: Kube, job: str) -> None:
    pod = k.kubelet.start_job(k.namespace, job)
    k.kubelet.waiting(k.namespace, pod, "CreateContainerConfigError",
                      'couldn\'t find key password in Secret infra/infra-db')


def _image_pull(k: Kube, job: str) -> None:
    pod = k.kubelet.start_job(k.namespace, job)
    k.kubelet.waiting(k.namespace, pod, "ImagePullBackOff", 'Back-off pulling image "nope:1"')


def _oom(k: Kube, job: str) -> None:
    k.kubelet.fail(k.namespace, job, exit_code=137, reason="OOMKilled")


def _deadline(k: Kube, job: str) -> None:
    k.kubelet.start_job(k.namespace, job)
    k.kubelet.exceed_deadline(k.namespace, job)


def _evicted(k: Kube, job: str) -> None:
    """The kubelet's node-pressure eviction: the Job controller replaces the pod (the
    disruption rule), and when the Job then ends without the runner's result, the last
    disruption is what is reported."""
    pod = k.kubelet.start_job(k.namespace, job)
    k.kubelet.run(k.namespace, pod)
    k.kubelet.evict(k.namespace, pod, "The node was low on resource: memory.")
    replacement = k.kubelet.start_job(k.namespace, job)
    assert replacement != pod
    k.kubelet.exceed_deadline(k.namespace, job)


def _deleted(k: Kube, job: str) -> None:
    k.kubelet.start_job(k.namespace, job)
    k.batch.delete_namespaced_job(job, k.namespace, propagation_policy="Background")


def _unschedulable(k: Kube, job: str) -> None:
    """The dispatcher of this case selects a node that does not exist (see the test): the
    real scheduler says so on the pod."""
    k.kubelet.start_job(k.namespace, job)


def _crashed(k: Kube, job: str) -> None:
    k.kubelet.fail(k.namespace, job, exit_code=5)


@pytest.mark.parametrize(("drive", "kind", "status", "job_deleted", "reason"), [
    (_config_error, "config_error", "failed", True, "CreateContainerConfigError"),
    (_image_pull, "image_pull", "failed", True, "ImagePullBackOff"),
    (_unschedulable, "unschedulable", "failed", True, "Unschedulable"),
    (_oom, "oom_killed", "failed", False, "OOMKilled"),
    (_deadline, "deadline_exceeded", "timed_out", False, "DeadlineExceeded"),
    (_evicted, "evicted", "failed", False, "Evicted"),
    (_deleted, "job_deleted", "failed", True, "JobDeleted"),
    (_crashed, "job_failed", "failed", False, "Error"),
])
async def test_job_that_ends_without_a_runner_result_is_reported(
        start, k8s: Kube, redis_client, keys, drive, kind: str, status: str,
        job_deleted: bool, reason: str) -> None:
    # A short grace only for the timer the case is about: any other timer running out
    # first (a slow machine, or a creationTimestamp cut to whole seconds, which ages a pod
    # by up to 1 s at once) would end the Job for another reason before the case drives it.
    nowhere = {"DISPATCHER_JOB_NODE_SELECTOR": json.dumps({"infra-service.io/test-node":
                                                           "nowhere"})}
    dispatcher = start(
        DISPATCHER_IMAGE_PULL_GRACE_SECONDS="2" if drive is _image_pull else "120",
        DISPATCHER_PENDING_TIMEOUT_SECONDS="3" if drive is _unschedulable else "120",
        **(nowhere if drive is _unschedulable else {}))
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    await redis_client.lpush(keys.queue, message("srv-1", "r2"))  # waits for srv-1
    await wait_until(lambda: job_count(k8s, 1), what="Job")
    name = job_for(k8s, "r1")["metadata"]["name"]
    status_code = 200
    try:
        await asyncio.to_thread(drive, k8s, name)
    except ApiException as exc:
        status_code = exc.status
    # The dispatcher may delete a stuck Job before the kubelet's last status write.
    assert status_code == 200 or (status_code == 404 and job_deleted)
    got = await wait_until(lambda: result_for(redis_client, keys, "r1"), what="failure result")
    assert (got["status"], got["reported_by"], got["error"]["kind"]) == \
        (status, "dispatcher", kind)
    assert got["job_name"] == name
    # The server is free again: the waiting message gets its Job.
    await wait_until(lambda: _has_job(k8s, "r2"), what="next Job for the server")
    # The reason is on the Job as a Warning Event (events.k8s.io/v1, seen by kubectl
    # describe through core/v1), with the pod's message.
    events = [e for e in k8s.objects("events")
              if e["involvedObject"]["name"] == name
              and e.get("reportingComponent") == "infra-service.io/dispatcher"]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", reason)]
    assert got["error"]["message"] == f"{reason}: {events[0]['message']}"
    if drive is _deleted:
        assert name not in {j["metadata"]["name"] for j in k8s.jobs()}
    elif job_deleted:
        # A stuck Job is stopped, not deleted: it stays, failed, until its TTL removes it.
        async def failed() -> dict | None:
            jobs = await asyncio.to_thread(k8s.jobs)
            job = next(j for j in jobs if j["metadata"]["name"] == name)
            done = [c for c in job["status"].get("conditions") or [] if c["type"] == "Failed"]
            return job if done else None
        job = await wait_until(failed, what="stopped Job failed")
        assert job["spec"]["activeDeadlineSeconds"] == 1
        assert job["metadata"]["annotations"]["infra-service.io/stopped"].startswith(
            f"{reason}: ")

        async def pods_gone() -> bool:  # the Job controller deletes them, the node obliges
            pods = await asyncio.to_thread(k8s.objects, "pods")
            return not [p for p in pods if p["metadata"]["name"].startswith(name)]
        await wait_until(pods_gone, what="the stopped Job's pods deleted")
    metrics = dispatcher.metrics()
    assert sum(metric_value(metrics, "infra_service_kube_jobs_failed_total", f'{{reason="{r}"}}')
               for r in _reasons(dispatcher)) == 1
    # By the result's kind and the action, beside Kubernetes' reason.
    assert metric_value(metrics, "infra_service_runs_failed_total",
                        f'{{action="setup",kind="{kind}"}}') == 1
    assert sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("infra_service_runs_failed_total{")) == 1


def _reasons(dispatcher: DispatcherProcess) -> set[str]:
    return {line.split('reason="')[1].split('"')[0] for line in dispatcher.metrics().splitlines()
            if line.startswith("infra_service_kube_jobs_failed_total{")}


async def _has_job(k8s: Kube, rid: str) -> bool:
    jobs = await asyncio.to_thread(k8s.jobs)
    return any(j["metadata"]["labels"][LABEL_REQUEST] == rid for j in jobs)


async def test_sigkill_at_random_moments_gives_exactly_one_job_per_message(
        start, k8s: Kube, redis_client, keys) -> None:
    total = 240
    payloads = []
    for i in range(total):
        # Half carry no request id: the dispatcher must give them one that survives crashes.
        payloads.append(message(f"srv-{i}", f"req-{i}" if i % 2 else None))
    rng = random.Random(1234)
    cap = {"DISPATCHER_MAX_IN_FLIGHT": "1000"}
    replicas = [start("r1", **cap)]
    # Slow creates down so that the kills land in the middle of the burst.
    k8s.inject(verb="create", resource="jobs", delay=0.03, count=100_000)
    await redis_client.lpush(keys.queue, *payloads)
    jobs_at_kill = []
    for round_ in range(6):
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        victim = replicas.pop(0)
        victim.kill()
        jobs_at_kill.append(len(k8s.jobs()))
        # Alternate between a restart under the same name and a new replica alongside.
        replicas.append(start("r1" if round_ % 2 else f"r{round_ + 2}", ready=False, **cap))
        if round_ == 3:
            replicas.append(start("r-extra", ready=False, **cap))
    await wait_until(lambda: job_count(k8s, total), timeout=120, what=f"{total} Jobs")
    await wait_until(lambda: _drained(redis_client, keys), timeout=30, what="queue drained")
    await asyncio.sleep(2)  # anything duplicated would show up now
    jobs = k8s.jobs()
    handles = [j["metadata"]["labels"][LABEL_HANDLE] for j in jobs]
    assert len(jobs) == total
    assert sorted(handles) == sorted(f"srv-{i}" for i in range(total))
    assert await redis_client.llen(keys.dead_letter) == 0
    # The crashes really happened mid-burst (not before or after it).
    assert sum(1 for n in jobs_at_kill if 0 < n < total) >= 2, jobs_at_kill


async def _drained(redis: aioredis.Redis, keys: Keys) -> bool:
    if await redis.llen(keys.queue):
        return False
    for member in await redis.smembers(keys.replicas):
        if await redis.llen(keys.processing(member.decode())):
            return False
    return True


async def test_two_replicas_share_the_queue(start, k8s: Kube, redis_client, keys) -> None:
    cap = {"DISPATCHER_MAX_IN_FLIGHT": "1000"}
    first, second = start("a", **cap), start("b", **cap)
    await redis_client.lpush(keys.queue, *[message(f"s{i}", f"r{i}") for i in range(120)])
    await wait_until(lambda: job_count(k8s, 120), timeout=60, what="120 Jobs")

    async def created() -> list[int] | None:
        # A Job is visible before its replica logs it (the log line follows the ack).
        counts = [sum(1 for e in p.log_events() if e["event"] == "Job created")
                  for p in (first, second)]
        return counts if sum(counts) >= 120 else None

    counts = await wait_until(created, timeout=30, what="120 'Job created' log lines")
    assert sum(counts) == 120
    assert all(counts), counts


async def test_api_faults_are_retried_with_the_message_kept(start, k8s: Kube, redis_client,
                                                            keys) -> None:
    dispatcher = start()
    control = k8s
    control.inject(verb="create", resource="jobs", status=500, count=3)
    control.inject(verb="create", resource="jobs", status=429, retry_after=1, count=2)
    control.inject(verb="create", resource="jobs", drop=True, count=2)
    await redis_client.lpush(keys.queue, *[message(f"s{i}", f"r{i}") for i in range(5)])
    await wait_until(lambda: job_count(k8s, 5), timeout=60, what="5 Jobs")

    async def answered() -> str | None:  # a Job is stored before its reply is counted
        text = await asyncio.to_thread(dispatcher.metrics)
        return text if metric_value(text, "infra_service_kube_api_responses_total",
                                    '{code="201",verb="create"}') >= 5 else None

    metrics = await wait_until(answered, timeout=30, what="5 creates answered 201")
    assert metric_value(metrics, "infra_service_kube_api_responses_total",
                        '{code="500",verb="create"}') == 3
    assert metric_value(metrics, "infra_service_kube_api_responses_total",
                        '{code="429",verb="create"}') == 2
    assert metric_value(metrics, "infra_service_kube_api_responses_total",
                        '{code="201",verb="create"}') == 5
    assert await redis_client.llen(keys.dead_letter) == 0


async def test_readiness_follows_an_api_outage(start, k8s: Kube, redis_client, keys) -> None:
    dispatcher = start()
    k8s.api_down()
    await redis_client.lpush(keys.queue, message("s1", "r1"))
    await wait_until(lambda: _status(dispatcher, 503), timeout=30, what="readyz 503")
    # Safe in Redis (claimed, or still queued) while the API is down.
    kept = await redis_client.llen(keys.processing("r1")) + await redis_client.llen(keys.queue)
    assert kept == 1
    await asyncio.to_thread(k8s.api_up)
    await wait_until(lambda: job_count(k8s, 1), timeout=30, what="Job after outage")
    await wait_until(lambda: _status(dispatcher, 200), timeout=30, what="readyz 200")


async def _status(dispatcher: DispatcherProcess, code: int) -> bool:
    return (await asyncio.to_thread(dispatcher.http, dispatcher.health_port, "/readyz"))[0] \
        == code


async def test_restart_readopts_jobs_and_reports_ends_missed_while_down(
        start, k8s: Kube, redis_client, keys) -> None:
    dispatcher = start()
    await redis_client.lpush(keys.queue, message("srv-1", "first"))
    await redis_client.lpush(keys.queue, message("srv-1", "second"))
    await wait_until(lambda: job_count(k8s, 1), what="first Job")
    dispatcher.kill()
    await asyncio.to_thread(k8s.kubelet.fail, k8s.namespace,
                            job_for(k8s, "first")["metadata"]["name"])
    start()
    got = await wait_until(lambda: result_for(redis_client, keys, "first"), what="readoption")
    assert got["reported_by"] == "dispatcher"
    await wait_until(lambda: _has_job(k8s, "second"), what="second Job")
    assert len(k8s.jobs()) == 2


async def test_in_flight_cap_holds_with_jobs(start, k8s: Kube, redis_client, keys) -> None:
    start(DISPATCHER_MAX_IN_FLIGHT="3")
    await redis_client.lpush(keys.queue, *[message(f"s{i}", f"r{i}") for i in range(10)])
    finished: set[str] = set()
    while len(finished) < 10:
        jobs = await wait_until(lambda: job_count(k8s, min(10, len(finished) + 3)),
                                what="Jobs up to the cap")
        active = [j for j in jobs if j["metadata"]["name"] not in finished]
        assert len(active) <= 3
        await asyncio.sleep(0.3)
        assert len(k8s.jobs()) - len(finished) <= 3  # no Job beyond the cap appears
        for job in active:
            rid = job["metadata"]["labels"][LABEL_REQUEST]
            await runner_reports(redis_client, keys, rid, job["metadata"]["labels"][LABEL_HANDLE])
            await asyncio.to_thread(k8s.kubelet.succeed, k8s.namespace, job["metadata"]["name"])
            finished.add(job["metadata"]["name"])
    assert len(await results(redis_client, keys)) == 10


async def test_existing_job_counts_as_dispatched_not_duplicated(start, k8s: Kube, redis_client,
                                                                keys) -> None:
    # A Job for the request already exists (a crash after create, before the ack).
    body = build_job(parse_message(message("srv-1", "r1")).with_identity(),
                     DispatcherSettings(instance="infra-service"), JobTemplateSettings())
    k8s.batch.create_namespaced_job(k8s.namespace, body)
    dispatcher = start()
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    await wait_until(lambda: _processing_empty(redis_client, keys), what="ack")
    assert len(k8s.jobs()) == 1
    metrics = dispatcher.metrics()
    assert metric_value(metrics, "infra_service_kube_api_responses_total",
                        '{code="409",verb="create"}') == 1
    assert metric_value(metrics, "infra_service_messages_dispatched_total") == 1
    assert metric_value(metrics, "infra_service_jobs_created_total") == 0

    async def in_flight_exported() -> bool:  # Redis-derived: refreshed in the background
        return metric_value(dispatcher.metrics(), "infra_service_jobs_in_flight") == 1
    await wait_until(in_flight_exported, what="infra_service_jobs_in_flight == 1")


async def _processing_empty(redis: aioredis.Redis, keys: Keys) -> bool:
    return await redis.llen(keys.queue) == 0 and await redis.llen(keys.processing("r1")) == 0


async def test_unauthorized_reloads_credentials_and_keeps_the_message(start, k8s: Kube,
                                                                      redis_client,
                                                                      keys) -> None:
    """401 means rotated or expired credentials: reload and retry, never dead-letter."""
    dispatcher = start()
    k8s.inject(verb="create", resource="jobs", status=401, count=3)
    await redis_client.lpush(keys.queue, message("srv-1", "r-401"))
    await wait_until(lambda: job_count(k8s, 1), timeout=60, what="Job after 401s")
    assert await redis_client.llen(keys.dead_letter) == 0
    metrics = dispatcher.metrics()
    assert metric_value(metrics, "infra_service_kube_api_responses_total",
                        '{code="401",verb="create"}') == 3
    assert any(e["event"].startswith("Kubernetes API answered 401") and e["reloaded"] is True
               for e in dispatcher.log_events())


async def test_a_create_whose_reply_was_lost_counts_as_created(start, k8s: Kube, redis_client,
                                                               keys) -> None:
    """The create is stored but its answer is lost; the retry meets 409 on our own Job."""
    dispatcher = start(DISPATCHER_MAX_IN_FLIGHT="100")
    k8s.inject(verb="create", resource="jobs", drop=True, applied=True,
                                count=5)
    await redis_client.lpush(keys.queue, *[message(f"s{i}", f"r{i}") for i in range(12)])
    await wait_until(lambda: job_count(k8s, 12), timeout=60, what="12 Jobs")
    await wait_until(lambda: _processing_empty(redis_client, keys), what="acks")

    async def counted() -> float | None:
        value = metric_value(dispatcher.metrics(), "infra_service_jobs_created_total")
        return value if value >= 12 else None

    assert await wait_until(counted, timeout=30, what="12 created") == 12
    assert metric_value(dispatcher.metrics(), "infra_service_kube_api_responses_total",
                        '{code="409",verb="create"}') == 5


@pytest.mark.parametrize("failures", [3, 8])
async def test_stopping_a_stuck_job_is_retried_and_the_failure_reported_anyway(
        start, k8s: Kube, redis_client, keys, failures: int) -> None:
    """Stopping is retried 8 times through API errors; past that the failure is reported
    all the same (the Job then ends at its own deadline)."""
    # CreateContainerConfigError stops the Job at once; no other timer may run out first. A
    # 1 s pending timeout did now and then: a pod's creationTimestamp is cut to whole
    # seconds, so it can look a second old when the Job controller creates it, and the Job
    # was then reported unschedulable before the kubelet's write of the config error.
    dispatcher = start(DISPATCHER_IMAGE_PULL_GRACE_SECONDS="120",
                       DISPATCHER_PENDING_TIMEOUT_SECONDS="120")
    k8s.inject(verb="patch", resource="jobs", status=503, count=failures)
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    await wait_until(lambda: job_count(k8s, 1), what="Job")
    name = job_for(k8s, "r1")["metadata"]["name"]
    await asyncio.to_thread(_config_error, k8s, name)
    got = await wait_until(lambda: result_for(redis_client, keys, "r1"), timeout=90,
                           what="failure result")
    assert (got["status"], got["error"]["kind"]) == ("failed", "config_error")
    events = [e["event"] for e in dispatcher.log_events()]
    assert events.count("stopping stuck Job failed; retrying") == min(failures, 7)
    stopped = "stuck Job stopped" in events
    gave_up = "could not stop the stuck Job; its failure is reported anyway and the Job " \
              "ends at its activeDeadlineSeconds (check the dispatcher's RBAC: patch on jobs)"
    assert (stopped, gave_up in events) == ((True, False) if failures < 8 else (False, True))
    annotations = job_for(k8s, "r1")["metadata"].get("annotations") or {}
    assert ("infra-service.io/stopped" in annotations) is stopped
    await wait_until(lambda: _slots_empty(redis_client, keys), what="server slot freed")


async def test_a_job_the_api_refuses_is_dead_lettered_and_frees_its_server(
        start, k8s: Kube, redis_client, keys) -> None:
    """422 for this message's Job while the settings' Job (dry run) is accepted."""
    start()  # the preflight at start-up passes; the next one is minutes away
    k8s.inject(verb="create", resource="jobs", status=422, count=1,
                                message="spec.template: Invalid value")
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    await redis_client.lpush(keys.queue, message("srv-1", "r2"))  # waits for srv-1
    got = await wait_until(lambda: result_for(redis_client, keys, "r1"), what="rejection")
    assert (got["status"], got["error"]["kind"]) == ("rejected", "invalid_message")
    assert "HTTP 422" in got["error"]["message"]
    entry = json.loads(await redis_client.lindex(keys.dead_letter, 0))
    assert (entry["reason"], entry["request_id"]) == ("job_rejected", "r1")
    await wait_until(lambda: _has_job(k8s, "r2"), what="next Job for the server")


async def test_a_create_refused_because_of_the_settings_waits_for_their_fix(
        start, k8s: Kube, redis_client, keys) -> None:
    """The create and the dry run of the settings' Job are both refused: the message stays
    claimed (no dead letter) until a later dry run is accepted, then its Job is created."""
    start(DISPATCHER_PREFLIGHT_SECONDS="1")
    k8s.inject(verb="create", resource="jobs", status=422, count=3,
                                message="spec.template.metadata.annotations: Invalid value")
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    await wait_until(lambda: _has_job(k8s, "r1"), timeout=60, what="Job once accepted")
    assert await redis_client.llen(keys.dead_letter) == 0
    assert await result_for(redis_client, keys, "r1") is None
