"""What an SRE and Prometheus see of a running dispatcher, against the emulator and Redis:

- the kubectl commands the chart's NOTES give for "why did web-7 fail", run verbatim with the
  real kubectl against the emulator;
- a real Prometheus (started here on 127.0.0.1) scraping the dispatcher with the chart's
  rules: dead letters, a failing Job and UNREACHABLE results make the expected alerts go
  pending/firing, and every dashboard query returns data;
- the Kubernetes calls the dispatcher made in these scenarios, as the emulator recorded them,
  are exactly what the chart's Role grants.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from contracts.keys import Keys
from contracts.reporting import publish_result
from contracts.results import Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.naming import LABEL_HANDLE
from tests.deploy.chart import RELEASE, render
from tests.deploy.test_alerts import dashboard_queries
from tests.dispatcher.kube_support import NAMESPACE, Kube, kube
from tests.dispatcher.support import REPO, DispatcherProcess, message, wait_until
from tests.k8s_emulator.kinds import BY_PLURAL
from tests.support.services import RedisServer, free_port

RUNNER_LOG = ('{"level": "error", "event": "play failed", "server_handle": "web-7", '
              '"error_kind": "play_failed"}\n')
JOB_NAME = f"{RELEASE}-infra-service-metrics"


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[Kube]:
    with kube(tmp_path, bookmark_interval=1, controller_mode="fail", controller_exit_code=10,
              controller_step_delay=0.2) as k:
        k.emulator.control.configure_controller(log=RUNNER_LOG)
        yield k


@pytest.fixture
def dispatcher(k8s: Kube, redis_srv: RedisServer, redis_client: aioredis.Redis,
               tmp_path: Path) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess({
        "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
        "DISPATCHER_KUBECONFIG": str(k8s.kubeconfig), "DISPATCHER_NAMESPACE": NAMESPACE,
        "DISPATCHER_INSTANCE": RELEASE, "DISPATCHER_HEARTBEAT_SECONDS": "0.5",
        "DISPATCHER_RECONCILE_SECONDS": "1", "DISPATCHER_ORPHAN_GRACE_SECONDS": "3",
        "DISPATCHER_API_RETRY_MAX_SECONDS": "1", "DISPATCHER_PENDING_TIMEOUT_SECONDS": "2",
        "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
    }, tmp_path / "dispatcher.log").start()
    process.wait_ready()
    try:
        yield process
    finally:
        process.kill()


async def _job_of(k8s: Kube, handle: str, finished: bool = True) -> dict[str, Any] | None:
    for job in await asyncio.to_thread(k8s.jobs):
        if job["metadata"]["labels"].get(LABEL_HANDLE) != handle:
            continue
        done = any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])
        if done or not finished:
            return job
    return None


# ---- the SRE's kubectl commands ----

def notes_commands(namespace: str) -> list[str]:
    """The "Why did a server's run fail" commands of the chart's NOTES, as printed."""
    notes = render(namespace=namespace).notes
    section = notes.split("Why did a server's run fail", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in section.splitlines()[1:] if line.strip()]


def test_readme_gives_the_notes_commands() -> None:
    readme = (REPO / "README.md").read_text()
    for command in notes_commands(NAMESPACE):
        assert command.replace("<server-handle>", "web-7") in readme, command


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_why_did_web_7_fail_with_the_notes_commands(
        dispatcher: DispatcherProcess, k8s: Kube, redis_client: aioredis.Redis,
        keys: Keys) -> None:
    await redis_client.lpush(keys.queue, message("web-7", "req-web-7"))
    job = await wait_until(lambda: _job_of(k8s, "web-7"), timeout=60, what="web-7's Job done")
    name = job["metadata"]["name"]
    commands = notes_commands(NAMESPACE)
    assert len(commands) == 6 and all(c.startswith(f"kubectl -n {NAMESPACE} ") for c in commands)
    out: list[str] = []
    for command in commands:
        line = command.replace("<server-handle>", "web-7").replace("<job-name>", name)
        argv = ["kubectl", "--kubeconfig", str(k8s.kubeconfig), *line.split()[1:]]
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                       timeout=60)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        out.append(done.stdout)
    get_jobs, describe, get_pods, describe_pods, logs, get_events = out
    jobs = [row.split() for row in get_jobs.splitlines()]
    assert jobs[0] == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert jobs[1][:3] == [name, "Failed", "0/1"]
    assert "infra-service.io/server-handle=web-7" in describe
    # The Job controller's Event names the exit code matched by the podFailurePolicy; the
    # dispatcher's Event (it reported the failure: no runner result) gives the pod's reason.
    assert "PodFailurePolicy" in describe and "exit code 10 matching FailJob" in describe
    assert "infra-service.io/dispatcher" in describe
    pods = [row.split() for row in get_pods.splitlines()]
    assert pods[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert pods[1][1:4] == ["0/1", "Error", "0"]
    # The runner wrote no termination message here: FallbackToLogsOnError puts the log tail.
    assert "Exit Code:    10" in describe_pods
    assert "Message:" in describe_pods and "play_failed" in describe_pods
    assert "play_failed" in logs
    events = [row.split() for row in get_events.splitlines()]
    assert events[0][:2] == ["LAST", "SEEN"]
    assert any(r[1:4] == ["Warning", "PodFailurePolicy", f"job/{name}"] for r in events[1:])
    assert any(r[1:4] == ["Warning", "Error", f"job/{name}"] for r in events[1:])


# ---- Prometheus ----

class Prometheus:
    def __init__(self, tmp: Path, target: str, rules: list[dict[str, Any]]) -> None:
        self.port = free_port()
        (tmp / "rules.yml").write_text(yaml.safe_dump({"groups": rules}))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [{
                "job_name": JOB_NAME, "static_configs": [{
                    "targets": [target], "labels": {"namespace": NAMESPACE}}]}]}))
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def short_window_rules() -> list[dict[str, Any]]:
    """The chart's rules with windows short enough for a test, for this job/namespace."""
    rendered = render({"prometheusRule": {
        "enabled": True, "selector": f'job="{JOB_NAME}", namespace="{NAMESPACE}"',
        "downFor": "5s", "notReadyFor": "5s", "backlogFor": "0s", "jobDeadlineFor": "0s",
        "deadLetterWindow": "2m", "failureWindow": "2m", "failureMinResults": 1,
        "unreachableWindow": "2m", "unreachableThreshold": 1}})
    return rendered.one("PrometheusRule")["spec"]["groups"]


async def _unreachable(redis: aioredis.Redis, keys: Keys, n: int) -> None:
    """What a runner publishes when SSH never answers."""
    for i in range(n):
        await publish_result(redis, keys, ResultEntry(
            request_id=f"unreach-{i}", server_handle=f"srv-{i}",
            status=ResultStatus.UNREACHABLE, reported_by=Reporter.RUNNER,
            finished_at=datetime.now(UTC), error=ResultError(
                kind="ssh_unreachable", message="SSH did not answer")))


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus is not installed (Debian package; install-deps.sh)")
async def test_real_prometheus_alerts_and_dashboard(
        dispatcher: DispatcherProcess, k8s: Kube, redis_client: aioredis.Redis, keys: Keys,
        tmp_path: Path) -> None:
    prom = Prometheus(tmp_path, f"127.0.0.1:{dispatcher.metrics_port}", short_window_rules())
    try:
        await wait_until(lambda: asyncio.to_thread(prom.ready), timeout=60,
                         what="Prometheus ready")

        def healthy_scrape() -> bool:
            targets = prom.api("targets")["activeTargets"]
            return bool(targets) and targets[0]["health"] == "up"

        async def scraped() -> bool:
            return await asyncio.to_thread(healthy_scrape)
        await wait_until(scraped, timeout=60, what="first scrape")
        await asyncio.sleep(3)  # a few samples of every zero-initialised series first

        # The scenario: dead letters, a failing runner Job, UNREACHABLE results.
        await redis_client.lpush(keys.queue, "not json", '{"no": "handle"}')
        await redis_client.lpush(keys.queue, message("web-7", "req-fail"))
        await wait_until(lambda: _job_of(k8s, "web-7"), timeout=60, what="failed Job")
        await _unreachable(redis_client, keys, 3)

        expected = {"InfraDeadLetterGrowth", "InfraJobFailureRatioHigh",
                    "InfraUnreachableSpike", "InfraFailureRatioHigh"}

        def alert_states() -> dict[str, set[str]]:
            states: dict[str, set[str]] = {}
            for alert in prom.api("alerts")["alerts"]:
                states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
            return states

        async def all_active() -> dict[str, set[str]] | None:
            states = await asyncio.to_thread(alert_states)
            return states if expected <= set(states) else None
        states = await wait_until(all_active, timeout=120, interval=1,
                                  what=f"alerts {sorted(expected)}")
        # A scrape slower than the 1 s interval on a loaded machine may make these pending
        # for a moment; firing needs 5 s of it.
        for healthy in ("InfraDispatcherDown", "InfraDispatcherNotReady"):
            assert "firing" not in states.get(healthy, set()), states
        alerts = prom.api("alerts")["alerts"]
        by_name = {a["labels"]["alertname"]: a for a in alerts}
        assert by_name["InfraJobFailureRatioHigh"]["labels"]["reason"] == "Error"
        kinds = {a["labels"].get("kind") for a in alerts
                 if a["labels"]["alertname"] == "InfraFailureRatioHigh"}
        assert "ssh_unreachable" in kinds
        # Prometheus rendered the annotation templates.
        assert "{{" not in json.dumps([a["annotations"] for a in alerts])

        # Every dashboard query returns data from this one dispatcher.
        empty = []
        for query in dashboard_queries(f'namespace="{NAMESPACE}", job="{JOB_NAME}"', "1m"):
            if not prom.api("query", query=query)["result"]:
                empty.append(query)
        assert not empty, empty

        # Least privilege, exactly: also let the dispatcher stop a Job whose pod never
        # starts (jobs patch) and record why (events.k8s.io events create), then compare
        # every call it made with the Role.
        k8s.emulator.control.configure_controller(mode="pending")
        await redis_client.lpush(keys.queue, message("stuck-1", "req-stuck"))
        await wait_until(lambda: _called(k8s, "patch", "jobs"), timeout=60,
                         what="stuck Job stopped")
        await wait_until(lambda: _called(k8s, "create", "events.events.k8s.io"), timeout=60,
                         what="failure Event recorded")
        # ... and a create whose reply is lost: the retry meets 409 and reads the Job to
        # tell whether it is ours (jobs get).
        k8s.emulator.control.inject(verb="create", resource="jobs", drop=True, applied=True,
                                    count=1)
        await redis_client.lpush(keys.queue, message("lost-1", "req-lost"))
        await wait_until(lambda: _called(k8s, "get", "jobs"), timeout=60, what="Job read")
        assert_role_matches(k8s.emulator.control.stats()["requests"])

        # The dispatcher dies: its scrape fails and InfraDispatcherDown fires (for: 5s).
        dispatcher.kill()

        async def down_firing() -> bool:
            states = await asyncio.to_thread(alert_states)
            return "firing" in states.get("InfraDispatcherDown", set())
        await wait_until(down_firing, timeout=90, interval=1, what="InfraDispatcherDown firing")
    finally:
        prom.stop()


async def _called(k8s: Kube, verb: str, resource: str) -> bool:
    stats = await asyncio.to_thread(k8s.emulator.control.stats)
    return any(r["verb"] == verb and r["resource"] == resource for r in stats["requests"])


def role_rules() -> set[tuple[str, str, str]]:
    role = render().one("Role")
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _rule_of(resource: str, verb: str) -> tuple[str, str, str]:
    """The emulator names resources `plural[.group][/sub]`, the group only where the plural
    alone is ambiguous (events); the Role names the group apart."""
    name, _, sub = resource.partition("/")
    plural, _, group = name.partition(".")
    if not group:
        group = BY_PLURAL[plural].group
    return group, f"{plural}/{sub}" if sub else plural, verb


def assert_role_matches(requests: list[dict[str, Any]]) -> None:
    """Only the dispatcher talks to this emulator's API (the controller is built in and the
    test reads through control endpoints), so the recorded calls are the dispatcher's."""
    called = {_rule_of(r["resource"], r["verb"]) for r in requests}
    assert called == role_rules(), (
        f"Role grants but never used: {sorted(role_rules() - called)}; "
        f"called but not granted: {sorted(called - role_rules())}")


def test_role_has_no_wildcards() -> None:
    assert not any("*" in part for rule in role_rules() for part in rule)
