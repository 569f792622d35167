"""From the Scheduler's push to the server's status: the dispatcher (a process, Kubernetes
executor, a ServiceAccount token with exactly its grants) -> the real kube-apiserver (RBAC,
PodSecurity restricted) -> the real Job controller and scheduler -> the node stand-in running
each pod as a container of the real runner image -> disposable hosts -> PostgreSQL +
provisioner:results.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.runner.conftest import Keypair
from tests.support.dispatch import DispatcherProcess, message, metric_value
from tests.support.e2e import (
    RUNNER_SECRET,
    Cluster,
    ContainerRun,
    ServerDb,
    StartDispatcher,
    unique,
    wait_for,
    wait_for_results,
)
from tests.support.hosts import Host
from tests.support.provider_api import ProviderApi
from tests.support.services import free_port


async def push(redis: aioredis.Redis, handle: str, request_id: str, **flags: bool) -> None:
    await redis.lpush(Keys().queue, message(handle, request_id, **flags))


async def finished_job(cluster: Cluster, name: str) -> dict[str, Any]:
    """The Job once the Job controller wrote its end (the runner reports before it exits)."""
    def done() -> dict[str, Any] | None:
        job = cluster.job(name)
        conditions = {c["type"] for c in job["status"].get("conditions") or []
                      if c["status"] == "True"}
        return job if conditions & {"Complete", "Failed"} else None
    return await wait_for(done, timeout=60, what=f"Job {name} finished")


async def metric_reaches(dispatcher: DispatcherProcess, name: str, value: float,
                         labels: str = "") -> None:
    await wait_for(lambda: metric_value(dispatcher.metrics(), name, labels) == value,
                   timeout=60, what=f"{name}{labels} == {value}")


def trace(host: Host, handle: str) -> list[str]:
    """What the plays recorded on the server, in order."""
    return host.exec(f"cat /var/lib/infra-e2e/{handle}.log").stdout.splitlines()


def peak_overlap(runs: list[ContainerRun]) -> int:
    edges = sorted([(r.started, 1) for r in runs] + [(r.finished or 0.0, -1) for r in runs],
                   key=lambda edge: (edge[0], edge[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def assert_no_secret(cluster: Cluster, *texts: str) -> None:
    stored = cluster.stored_text()
    for value in cluster.secret_values:
        assert value not in stored, \
            "a secret value reached a Job, Pod, Event, ConfigMap or container output"
        for text in texts:
            assert value not in text, "a secret value reached a log line or a result"


@pytest.mark.hosts
async def test_setup(start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
                     server_db: ServerDb, redis_client: aioredis.Redis,
                     ssh_keys: dict[str, Keypair]) -> None:
    host, handle, rid = hosts[0], unique("setup"), unique("req")
    server_db.register(handle, host.address, host.ssh_port)
    dispatcher = start_dispatcher()
    await push(redis_client, handle, rid)

    result = (await wait_for_results(redis_client, [rid]))[rid]
    assert (result["status"], result["reported_by"], result["action"]) == \
        ("succeeded", "runner", "setup"), result
    assert result["details"]["e2e_traced"] is True and result["recap"]["failed"] == 0

    # The server: status row, deploy key, the play's trace.
    row = await server_db.row(handle)
    assert (row["status"], row["last_request_id"]) == ("READY", rid)
    assert row["host_key"] == " ".join(host.host_public_key().split()[:2])
    authorized = host.exec("cat /root/.ssh/authorized_keys").stdout.splitlines()
    assert ssh_keys["orchestrator"].public in authorized
    assert trace(host, handle) == [f"start setup {rid}", f"end setup {rid}"]

    # Kubernetes: one Job, completed by the Job controller, whose one pod (admitted under
    # PodSecurity restricted, bound by the scheduler to the e2e node) ran the runner image to
    # exit code 0, as the pod's user on a read-only root.
    (listed,) = cluster.objects("jobs")
    name = listed["metadata"]["name"]
    assert result["job_name"] == name
    job = await finished_job(cluster, name)
    assert job["status"]["succeeded"] == 1 and job["status"]["completionTime"]
    (pod,) = cluster.pods_of(name)
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == cluster.node.name
    (state,) = pod["status"]["containerStatuses"]
    assert state["state"]["terminated"]["exitCode"] == 0
    (container,) = listed["spec"]["template"]["spec"]["containers"]
    assert state["image"] == container["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"SuccessfulCreate", "Completed"} <= set(cluster.event_reasons(name))
    # (the node stand-in records no Pulled Event for an image already present)
    assert {"Scheduled", "Created", "Started"} <= \
        set(cluster.event_reasons(pod["metadata"]["name"]))
    (run,) = cluster.observer.runs
    assert (run.job_name, run.request_id, run.exit_code) == (name, rid, 0)

    await metric_reaches(dispatcher, "infra_service_kube_jobs_completed_total", 1)
    assert_no_secret(cluster, dispatcher.logs(), json.dumps(result))


@pytest.mark.hosts
async def test_recovery(start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
                        server_db: ServerDb, redis_client: aioredis.Redis) -> None:
    host, handle, rid = hosts[0], unique("recover"), unique("req")
    server_db.register(handle, host.address, host.ssh_port)
    start_dispatcher()
    await push(redis_client, handle, rid, is_recovery=True)

    result = (await wait_for_results(redis_client, [rid]))[rid]
    assert (result["status"], result["action"]) == ("succeeded", "recovery"), result
    assert result["recap"]["changed"] == 2  # both recovery plays, summed
    assert trace(host, handle) == [f"recovery-one {rid}", f"recovery-two {rid}"]
    assert (await server_db.row(handle))["status"] == "READY"
    (job,) = cluster.objects("jobs")
    assert job["metadata"]["labels"]["infra-service.io/action"] == "recovery"


@pytest.mark.hosts
async def test_force_reinstall_through_the_provider_api(
        start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
        server_db: ServerDb, redis_client: aioredis.Redis, provider: ProviderApi,
        ssh_keys: dict[str, Keypair]) -> None:
    host, handle, rid = hosts[1], unique("reinstall"), unique("req")
    server_db.register(handle, host.address, host.ssh_port, provider_server_id="4242")
    old_host_key = host.host_public_key()

    def reinstalled(server_id: str, body: dict[str, Any]) -> None:
        # What a reinstall does to the server: a new identity, only the key handed over.
        host.regenerate_host_keys()
        host.write_file("/root/.ssh/authorized_keys", body["ssh_key"] + "\n", "0600")

    provider.reset(pending_polls=1, on_reinstall=reinstalled)
    dispatcher = start_dispatcher(runner_env={"PROVIDER_REQUEST_TIMEOUT": "30"})
    await push(redis_client, handle, rid, force_reinstall=True)

    result = (await wait_for_results(redis_client, [rid]))[rid]
    assert (result["status"], result["action"]) == ("succeeded", "reinstall"), result
    posts = [r for r in provider.requests if r.method == "POST"]
    assert [p.path for p in posts] == ["/api/server/4242/reinstall"]
    assert posts[0].body["ssh_key"].split()[1] == ssh_keys["provisioner"].public.split()[1]
    # The credentials came from the Secret the Job names in envFrom.
    assert provider.requests and all(r.authorized for r in provider.requests)
    polls = [r for r in provider.requests if "/task/" in r.path]
    assert polls[-1].path.endswith(f"/task/{result['details']['provider_task_id']}")
    row = await server_db.row(handle)
    new_host_key = host.host_public_key()
    assert new_host_key != old_host_key
    assert row["host_key"] == " ".join(new_host_key.split()[:2]) and row["status"] == "READY"
    assert_no_secret(cluster, dispatcher.logs(), json.dumps(result))


async def test_unreachable_server(start_dispatcher: StartDispatcher, cluster: Cluster,
                                  server_db: ServerDb, redis_client: aioredis.Redis) -> None:
    handle, rid = unique("gone"), unique("req")
    server_db.register(handle, "127.0.0.1", free_port())  # nothing listens there
    dispatcher = start_dispatcher()
    await push(redis_client, handle, rid)

    result = (await wait_for_results(redis_client, [rid]))[rid]
    assert (result["status"], result["reported_by"], result["error"]["kind"]) == \
        ("unreachable", "runner", "ssh_unreachable"), result
    row = await server_db.row(handle)
    assert row["status"] == "UNREACHABLE" and row["status_reason"]
    job = await finished_job(cluster, result["job_name"])
    assert job["status"]["failed"] == 1
    (pod,) = cluster.pods_of(result["job_name"])
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 11
    # The dispatcher saw the failed Job, and did not add a result of its own.
    await metric_reaches(dispatcher, "infra_service_kube_jobs_failed_total", 1, '{reason="Error"}')
    assert list(await wait_for_results(redis_client, [rid])) == [rid]


async def test_a_finished_job_is_removed_by_its_ttl(
        start_dispatcher: StartDispatcher, cluster: Cluster, server_db: ServerDb,
        redis_client: aioredis.Redis) -> None:
    """The TTL-after-finished controller deletes the Job (and the garbage collector its
    pod) after ttlSecondsAfterFinished; the dispatcher, which saw the Job end, neither
    reports it again nor counts it twice."""
    handle, rid = unique("ttl"), unique("req")
    server_db.register(handle, "127.0.0.1", free_port())  # nothing listens there
    dispatcher = start_dispatcher(DISPATCHER_JOB_TTL_SECONDS_AFTER_FINISHED="3")
    await push(redis_client, handle, rid)

    result = (await wait_for_results(redis_client, [rid]))[rid]
    assert (result["status"], result["reported_by"]) == ("unreachable", "runner"), result
    name = result["job_name"]
    await wait_for(lambda: ("ended", name) in cluster.observer.job_order, timeout=60,
                   what=f"Job {name} finished")
    await wait_for(lambda: not cluster.objects("jobs") and not cluster.objects("pods"),
                   timeout=60, what="the Job and its pod removed by the TTL")
    await metric_reaches(dispatcher, "infra_service_kube_jobs_failed_total", 1, '{reason="Error"}')
    await asyncio.sleep(2)  # the deletion reached the dispatcher's watch meanwhile
    text = dispatcher.metrics()
    assert metric_value(text, "infra_service_kube_jobs_failed_total", '{reason="Error"}') == 1
    assert metric_value(text, "infra_service_kube_jobs_failed_total", '{reason="JobDeleted"}') == 0
    assert await redis_client.llen(Keys().results) == 1
    assert await redis_client.hlen(Keys().inflight) == 0


@pytest.mark.hosts
async def test_failing_play(start_dispatcher: StartDispatcher, cluster: Cluster,
                            hosts: list[Host], server_db: ServerDb,
                            redis_client: aioredis.Redis) -> None:
    host, handle, rid = hosts[0], unique("fail"), unique("req")
    server_db.register(handle, host.address, host.ssh_port)
    dispatcher = start_dispatcher(runner_env={"SETUP_PLAYBOOK": "playbooks/failing.yml"})
    await push(redis_client, handle, rid)

    result = (await wait_for_results(redis_client, [rid]))[rid]
    assert (result["status"], result["reported_by"]) == ("failed", "runner"), result
    error = result["error"]
    assert (error["kind"], error["task"], error["host"], error["return_code"]) == \
        ("play_failed", "Format the data disk", handle, 3)
    assert "disk on fire" in error["output_tail"]
    row = await server_db.row(handle)
    assert row["status"] == "FAILED" and "Format the data disk" in row["status_reason"]
    job = await finished_job(cluster, result["job_name"])
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    # The runner's exit code 10 matches the Job's podFailurePolicy: FailJob at once.
    assert failed and failed[0]["reason"] == "PodFailurePolicy"
    assert "failed with exit code 10 matching FailJob rule" in failed[0]["message"]
    (pod,) = cluster.pods_of(result["job_name"])
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 10
    await metric_reaches(dispatcher, "infra_service_kube_jobs_failed_total", 1, '{reason="Error"}')
    assert list(await wait_for_results(redis_client, [rid])) == [rid]


@pytest.mark.hosts
async def test_deleting_a_running_job_stops_its_runner(
        start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
        server_db: ServerDb, redis_client: aioredis.Redis) -> None:
    host, handle, rid = hosts[1], unique("deleted"), unique("req")
    server_db.register(handle, host.address, host.ssh_port)
    start_dispatcher(runner_env={"E2E_PLAY_SECONDS": "60"})
    await push(redis_client, handle, rid)
    started = f"start setup {rid}"
    await wait_for(lambda: started in host.exec(f"cat /var/lib/infra-e2e/{handle}.log",
                                                check=False).stdout,
                   timeout=120, what="the play running on the server")

    # kubectl delete job <name>: the garbage collector deletes the pod, and the node stops
    # its container (SIGTERM, then the grace period).
    (job,) = cluster.objects("jobs")
    await asyncio.to_thread(cluster.batch.delete_namespaced_job, job["metadata"]["name"],
                            cluster.namespace, propagation_policy="Background")
    result = (await wait_for_results(redis_client, [rid]))[rid]
    # The dispatcher reports (the Job is gone); the SIGTERMed runner publishes nothing.
    assert (result["status"], result["error"]["kind"], result["reported_by"]) == \
        ("failed", "job_deleted", "dispatcher"), result
    (run,) = cluster.observer.runs
    await wait_for(lambda: run.finished is not None, timeout=60,
                   what="the runner container ended")
    # SIGTERM: the runner cancelled its play, not killed (the node's last status write)
    assert run.exit_code == 15, cluster.describe()
    assert "Killing" in cluster.event_reasons(run.pod_name)
    row = await server_db.row(handle)
    assert row["status"] == "FAILED" and "cancel" in row["status_reason"]
    assert f"end setup {rid}" not in trace(host, handle)
    assert list(await wait_for_results(redis_client, [rid])) == [rid]


async def test_image_that_does_not_exist(start_dispatcher: StartDispatcher, cluster: Cluster,
                                         server_db: ServerDb,
                                         redis_client: aioredis.Redis) -> None:
    handle, rid = unique("noimage"), unique("req")
    server_db.register(handle, "127.0.0.1", free_port())
    image = "localhost/infra-service-runner:no-such-tag"
    dispatcher = start_dispatcher(DISPATCHER_JOB_IMAGE=image,
                                  DISPATCHER_IMAGE_PULL_GRACE_SECONDS="3")
    await push(redis_client, handle, rid)

    result = (await wait_for_results(redis_client, [rid], timeout=60))[rid]
    assert (result["status"], result["reported_by"], result["error"]["kind"]) == \
        ("failed", "dispatcher", "image_pull"), result
    assert image in result["error"]["message"]
    # The stuck Job is stopped, not deleted: it stays failed (until its TTL; the Job
    # controller fails it for its shortened deadline) with the reason in an annotation and a
    # Warning Event; its pod is gone, nothing ran, the server is untouched and free again.
    def stopped() -> bool:
        jobs = cluster.objects("jobs")
        return len(jobs) == 1 and any(
            c["type"] == "Failed" for c in jobs[0]["status"].get("conditions") or [])
    await wait_for(stopped, timeout=30, what="stuck Job stopped")
    (job,) = cluster.objects("jobs")
    assert job["metadata"]["annotations"]["infra-service.io/stopped"].startswith(
        ("ErrImagePull: ", "ImagePullBackOff: "))
    await wait_for(lambda: not cluster.objects("pods"), timeout=30, what="stuck pod deleted")
    assert cluster.observer.runs == []
    assert (await server_db.row(handle))["status"] == "NEW"
    assert await redis_client.hlen(Keys().inflight) == 0
    events = cluster.objects("events")
    assert any(e["reason"] == "Pulling" and image in e["message"] for e in events)
    assert {"Failed", "BackOff"} <= {e["reason"] for e in events}
    assert any(e.get("reportingComponent") == "infra-service.io/dispatcher"
               and e["involvedObject"]["name"] == job["metadata"]["name"]
               and image in e["message"] for e in events)
    await wait_for(lambda: sum(metric_value(dispatcher.metrics(),
                                            "infra_service_kube_jobs_failed_total",
                                            f'{{reason="{reason}"}}')
                               for reason in ("ErrImagePull", "ImagePullBackOff")) == 1,
                   timeout=30, what="infra_service_kube_jobs_failed_total for the image pull")


async def test_missing_secret_key_is_a_container_config_error(
        start_dispatcher: StartDispatcher, cluster: Cluster, server_db: ServerDb,
        redis_client: aioredis.Redis) -> None:
    handle, rid = unique("nokey"), unique("req")
    server_db.register(handle, "127.0.0.1", free_port())
    start_dispatcher(secret_env={"CREDENTIALS_KEY": {"secret": RUNNER_SECRET,
                                                     "key": "credentials-key"}})
    await push(redis_client, handle, rid)

    result = (await wait_for_results(redis_client, [rid], timeout=60))[rid]
    assert (result["status"], result["reported_by"], result["error"]["kind"]) == \
        ("failed", "dispatcher", "config_error"), result
    assert f"couldn't find key credentials-key in Secret {cluster.namespace}/{RUNNER_SECRET}" \
        in result["error"]["message"]
    assert cluster.observer.runs == []
    assert (await server_db.row(handle))["status"] == "NEW"


@pytest.mark.hosts
async def test_two_messages_for_one_server_run_one_after_the_other(
        start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
        server_db: ServerDb, redis_client: aioredis.Redis) -> None:
    host, handle = hosts[0], unique("twice")
    first, second = unique("req"), unique("req")
    server_db.register(handle, host.address, host.ssh_port)
    dispatcher = start_dispatcher(runner_env={"E2E_PLAY_SECONDS": "2"})
    await push(redis_client, handle, first)
    await push(redis_client, handle, second)

    got = await wait_for_results(redis_client, [first, second])
    assert all(r["status"] == "succeeded" for r in got.values()), got
    runs = sorted(cluster.observer.runs, key=lambda r: r.started or 0.0)
    assert [r.request_id for r in runs] == [first, second]
    # The second Job was created only after the first one had ended (its pod too).
    await finished_job(cluster, runs[1].job_name)
    assert runs[0].finished is not None
    assert cluster.observer.created_after_end(runs[0].job_name, runs[1].job_name), \
        cluster.observer.job_order
    (first_pod,) = cluster.pods_of(runs[0].job_name)
    ended = first_pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    created = cluster.job(runs[1].job_name)["metadata"]["creationTimestamp"]
    assert created >= ended  # RFC 3339 UTC, whole seconds: ordered as text
    assert trace(host, handle) == [f"start setup {first}", f"end setup {first}",
                                   f"start setup {second}", f"end setup {second}"]
    assert metric_value(dispatcher.metrics(), "infra_service_messages_parked_total") == 1


@pytest.mark.hosts
async def test_ten_servers_with_an_in_flight_cap_of_three(
        start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
        server_db: ServerDb, redis_client: aioredis.Redis) -> None:
    handles = [unique(f"fleet{i}") for i in range(10)]
    rids = {handle: unique("req") for handle in handles}
    for i, handle in enumerate(handles):
        host = hosts[i % len(hosts)]
        server_db.register(handle, host.address, host.ssh_port)
    dispatcher = start_dispatcher(DISPATCHER_MAX_IN_FLIGHT="3",
                                  runner_env={"E2E_PLAY_SECONDS": "0"})
    await redis_client.lpush(Keys().queue, *[message(h, rids[h]) for h in handles])

    got = await wait_for_results(redis_client, list(rids.values()), timeout=420)
    assert all(r["status"] == "succeeded" for r in got.values()), got
    for handle in handles:
        assert (await server_db.row(handle))["status"] == "READY"
    observer = cluster.observer
    assert observer.peak_active_jobs == 3  # the cap was reached and never exceeded
    assert peak_overlap(observer.runs) <= 3
    assert sorted(r.request_id for r in observer.runs) == sorted(rids.values())
    await metric_reaches(dispatcher, "infra_service_kube_jobs_completed_total", 10)


@pytest.mark.hosts
async def test_dispatcher_restart_in_the_middle(
        start_dispatcher: StartDispatcher, cluster: Cluster, hosts: list[Host],
        server_db: ServerDb, redis_client: aioredis.Redis) -> None:
    handles = [unique(f"restart{i}") for i in range(4)]
    rids = {handle: unique("req") for handle in handles}
    for i, handle in enumerate(handles):
        host = hosts[i % len(hosts)]
        server_db.register(handle, host.address, host.ssh_port)
    settings = {"DISPATCHER_MAX_IN_FLIGHT": "2", "runner_env": {"E2E_PLAY_SECONDS": "4"}}
    first = start_dispatcher(**settings)
    await redis_client.lpush(Keys().queue, *[message(h, rids[h]) for h in handles])
    node = cluster.observer

    await wait_for(lambda: len(node.running()) == 2, timeout=120, what="two runners running")
    first.kill()  # SIGKILL: no shutdown of any kind
    adopted = {r.job_name for r in node.running()}
    # One Job ends while no dispatcher watches; the other is still running at the restart.
    await wait_for(lambda: any(r.finished for r in node.runs), timeout=120,
                   what="a runner finished during the outage")
    second = start_dispatcher(**settings)

    got = await wait_for_results(redis_client, list(rids.values()), timeout=300)
    assert all((r["status"], r["reported_by"]) == ("succeeded", "runner")
               for r in got.values()), got
    jobs = cluster.objects("jobs")
    assert sorted(j["metadata"]["labels"]["infra-service.io/request-id"] for j in jobs) == \
        sorted(rids.values())  # no Job twice
    assert sorted(r.request_id for r in node.runs) == sorted(rids.values())  # no pod twice
    assert node.peak_active_jobs <= 2
    # The new process took over the Jobs of the killed one and saw them end.
    await metric_reaches(second, "infra_service_kube_jobs_completed_total", 4)
    finished_by_second = {e.get("job_name") for e in second.log_events()
                          if e.get("event") == "Job finished"}
    assert adopted <= finished_by_second
    assert await redis_client.llen(Keys().results) == 4  # one result per server, no more
