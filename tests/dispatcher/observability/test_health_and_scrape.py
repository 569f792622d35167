"""What an SRE and Prometheus see of a running dispatcher, against the real API server and
controllers and Redis:

- the kubectl commands the chart's NOTES give for "why did web-7 fail", run verbatim with the
  real kubectl against the real API server; the test is the kubelet of the node the runner pod
  is bound to (tests/support/status_node.py), and serves the one kubelet endpoint ``kubectl
  logs`` reaches through the API server (``/containerLogs``);
- a real Prometheus (started here on 127.0.0.1) scraping the dispatcher with the chart's
  rules: dead letters, a failing Job and UNREACHABLE results make the expected alerts go
  pending/firing, and every dashboard query returns data.

That the chart's Role grants exactly the Kubernetes calls the dispatcher makes was checked here
against the calls the emulator recorded; tests/kube/test_chart_rbac.py now proves it with the
real authorizer (the grants are enough, each is used, and without any one the dispatcher names
it), so that part is gone from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import shutil
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
import uuid
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
from tests.deploy.test_alerts import dashboard_queries
from tests.support.chart import RELEASE, render
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import REPO, DispatcherProcess, message, wait_until
from tests.support.kube_env import KubeEnv as Kube
from tests.support.services import RedisServer, free_port
from tests.support.status_node import StatusKubelet, StatusNode

RUNNER_LOG = ('{"level": "error", "event": "play failed", "server_handle": "web-7", '
              '"error_kind": "play_failed"}\n')
JOB_NAME = f"{RELEASE}-infra-service-metrics"
# The namespace the README's copy of the NOTES commands names; Prometheus' target label.
NAMESPACE = "infra"


class LogNode(StatusNode):
    """A status node that also serves the kubelet's ``/containerLogs`` on 127.0.0.1, at the
    port its status announces, so ``kubectl logs`` works through the real API server. Its
    only address is InternalIP 127.0.0.1 (the API server would look a Hostname up in DNS).
    Every runner container on it logged ``RUNNER_LOG``: the test is its kubelet."""

    def __init__(self, cp: ControlPlane) -> None:
        super().__init__(cp, f"logs-{uuid.uuid4().hex[:6]}")
        cp.pki.issue(self.name, self.name, server=True, ips=["127.0.0.1"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cp.pki.path(f"{self.name}.crt")),
                                str(cp.pki.path(f"{self.name}.key")))
        self.requests: list[str] = []
        self._logs = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._logs.daemon_threads = True
        self._logs.socket = context.wrap_socket(self._logs.socket, server_side=True)
        self.log_port = int(self._logs.server_address[1])
        threading.Thread(target=self._logs.serve_forever, daemon=True,
                         name=f"{self.name}-logs").start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                requests.append(self.path)
                if not self.path.startswith("/containerLogs/"):
                    self.send_error(404, "only container logs are served here")
                    return
                body = RUNNER_LOG.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _post_status(self) -> None:
        capacity = {"cpu": "8", "memory": "32Gi", "pods": "20", "ephemeral-storage": "100Gi"}
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.core.patch_node_status(self.name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {"kubeletVersion": "v1.36.3", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "none://test",
                         "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""}}})

    def stop(self) -> None:
        super().stop()
        self._logs.shutdown()
        self._logs.server_close()


@pytest.fixture
def log_node(control_plane: ControlPlane) -> Iterator[LogNode]:
    node = LogNode(control_plane)
    try:
        yield node.start()  # type: ignore[misc]
    finally:
        with contextlib.suppress(Exception):
            node.stop()


@pytest.fixture
def k8s(kube_env: Kube) -> Kube:
    return kube_env


@pytest.fixture
def dispatcher(k8s: Kube, log_node: LogNode, redis_srv: RedisServer,
               redis_client: aioredis.Redis, tmp_path: Path) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess({
        "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
        **k8s.dispatcher_env(),
        # The runner pods go to the node whose kubelet (and log endpoint) is this test.
        "DISPATCHER_JOB_NODE_SELECTOR": json.dumps(log_node.selector),
        "DISPATCHER_JOB_TOLERATIONS": json.dumps(log_node.tolerations),
        "DISPATCHER_INSTANCE": RELEASE, "DISPATCHER_HEARTBEAT_SECONDS": "0.5",
        "DISPATCHER_RECONCILE_SECONDS": "1", "DISPATCHER_ORPHAN_GRACE_SECONDS": "3",
        "DISPATCHER_API_RETRY_MAX_SECONDS": "1",
        # a cap per action, so the dashboard's saturation per action has its series
        "DISPATCHER_ACTION_CAPS": '{"reinstall": 5}',
        "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
    }, tmp_path / "dispatcher.log").start()
    process.wait_ready()
    try:
        yield process
    finally:
        process.kill()


async def _fail_like_the_runner(k8s: Kube, node: LogNode, handle: str) -> dict[str, Any]:
    """The handle's runner exits 10 having written no termination message: the kubelet puts
    the log's tail there (FallbackToLogsOnError); the real Job controller fails the Job."""
    job = await wait_until(lambda: _job_of(k8s, handle, finished=False), timeout=60,
                           what=f"{handle}'s Job")
    kubelet = StatusKubelet(node)
    # Generous: after a heavy test the Job controller may still be busy for a while.
    pod = await asyncio.to_thread(kubelet.start_job, k8s.namespace, job["metadata"]["name"], 90)
    await asyncio.to_thread(kubelet.run, k8s.namespace, pod)
    await asyncio.to_thread(kubelet.terminate, k8s.namespace, pod, 10, None, RUNNER_LOG)
    done: dict[str, Any] = await wait_until(lambda: _job_of(k8s, handle), timeout=60,
                                            what=f"{handle}'s Job failed")
    return done


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


async def test_why_did_web_7_fail_with_the_notes_commands(
        dispatcher: DispatcherProcess, k8s: Kube, log_node: LogNode,
        redis_client: aioredis.Redis, keys: Keys) -> None:
    await redis_client.lpush(keys.queue, message("web-7", "req-web-7"))
    job = await _fail_like_the_runner(k8s, log_node, "web-7")
    name = job["metadata"]["name"]
    # The dispatcher reports the failure (no runner result) and records its Event; the Job
    # controller records its own. Both are written after the Job is seen failed.
    await wait_until(lambda: _events_on(k8s, name), timeout=120, interval=0.5,
                     what="the dispatcher's and the job-controller's Events on the Job")
    namespace = k8s.namespace
    commands = notes_commands(namespace)
    assert len(commands) == 6 and all(c.startswith(f"kubectl -n {namespace} ") for c in commands)
    out: list[str] = []
    for command in commands:
        line = command.replace("<server-handle>", "web-7").replace("<job-name>", name)
        # An SRE's own credentials (the cluster admin here), not the dispatcher's.
        argv = [str(k8s.cp.bin / "kubectl"), "--kubeconfig", str(k8s.cp.kubeconfig()),
                *line.split()[1:]]
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
    assert logs == RUNNER_LOG  # through the API server from the node's kubelet endpoint
    assert any(p.startswith(f"/containerLogs/{namespace}/") for p in log_node.requests)
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
        "downFor": "5s", "notReadyFor": "5s", "stateMissingFor": "5s",
        "deadLetterWindow": "2m", "deadLetterFor": "0s", "failureWindow": "2m",
        "failureMinResults": 100, "serverFailedFor": "0s", "unreachableWindow": "2m",
        "unreachableThreshold": 2, "unreachableFor": "0s"}})
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
        dispatcher: DispatcherProcess, k8s: Kube, log_node: LogNode,
        redis_client: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
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

        def alert_states() -> dict[str, set[str]]:
            states: dict[str, set[str]] = {}
            for alert in prom.api("alerts")["alerts"]:
                states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
            return states

        async def firing(*names: str) -> dict[str, set[str]] | None:
            states = await asyncio.to_thread(alert_states)
            return states if all("firing" in states.get(n, set()) for n in names) else None

        # Dead letters and one server's failed run: tickets, the server named.
        await redis_client.lpush(keys.queue, "not json", '{"no": "handle"}')
        await redis_client.lpush(keys.queue, message("web-7", "req-fail"))
        await _fail_like_the_runner(k8s, log_node, "web-7")
        await wait_until(lambda: firing("InfraServiceDeadLettersUntriaged",
                                        "InfraServiceServerFailed"),
                         timeout=120, interval=1, what="the dead-letter and server tickets")
        alerts = prom.api("alerts")["alerts"]
        (server,) = [a["labels"] for a in alerts
                     if a["labels"]["alertname"] == "InfraServiceServerFailed"]
        assert server["server_handle"] == "web-7" and server["severity"] == "warning"
        assert {server["namespace"], server["job"]} == {NAMESPACE, JOB_NAME}
        assert "not_json" in {a["labels"].get("reason") for a in alerts}
        # Prometheus rendered the annotation templates.
        assert "{{" not in json.dumps([a["annotations"] for a in alerts])

        # Many servers unreachable at once: one page, which replaces the server tickets.
        await _unreachable(redis_client, keys, 3)
        states = await wait_until(lambda: firing("InfraServiceUnreachableSpike"),
                                  timeout=120, interval=1, what="the unreachable spike")
        alerts = prom.api("alerts")["alerts"]
        assert not [a for a in alerts if a["labels"]["alertname"] in (
            "InfraServiceServerFailed", "InfraServiceFailureRatioHigh")], alerts
        # A scrape slower than the 1 s interval on a loaded machine may make these pending
        # for a moment; firing needs 5 s of it.
        for healthy in ("InfraServiceDispatcherDown", "InfraServiceDispatcherNotReady",
                        "InfraServiceQueueStateMissing"):
            assert "firing" not in states.get(healthy, set()), states

        # Every dashboard query returns data from this one dispatcher.
        empty = []
        for query in dashboard_queries(f'namespace="{NAMESPACE}", job="{JOB_NAME}"', "1m"):
            if not prom.api("query", query=query)["result"]:
                empty.append(query)
        assert not empty, empty

        # The dispatcher dies: its scrape fails and InfraServiceDispatcherDown fires (for: 5s).
        dispatcher.kill()
        await wait_until(lambda: firing("InfraServiceDispatcherDown"), timeout=90, interval=1,
                         what="InfraServiceDispatcherDown firing")
    finally:
        prom.stop()


async def _events_on(k8s: Kube, name: str) -> bool:
    events = await asyncio.to_thread(k8s.objects, "events")
    by = {(e.get("reportingComponent") or (e.get("source") or {}).get("component"), e["reason"])
          for e in events if e["involvedObject"]["name"] == name}
    return {("infra-service.io/dispatcher", "Error"),
            ("job-controller", "PodFailurePolicy")} <= by


def role_rules() -> set[tuple[str, str, str]]:
    role = render().one("Role")
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_role_has_no_wildcards() -> None:
    assert not any("*" in part for rule in role_rules() for part in rule)
