"""The chart's whole life with the real helm against the real control plane, its pods run
from the real images by a node of this module's own (tests/support/chart_node.py):

install (the schema refuses a bad value first; the pre-install migration hook Job runs the
runner image's ``migrate`` against the tests' PostgreSQL and is deleted), the Deployment's
dispatcher pod runs the dispatcher image with the chart's ServiceAccount token and becomes
Ready, it creates a runner Job for a message pushed to Redis (the real authorizer judges
every call of the dispatcher in its pod), ``helm test``, ``helm upgrade`` (a new maxInFlight
rolls the Deployment and reaches the running process), ``helm rollback`` to revision 1 and
``helm uninstall``, after which nothing of the release is left in the namespace (the
dispatcher's runner Job and its pod stay for runner.ttlSecondsAfterFinished: they are the
run's record, not the release's objects). The
namespace enforces PodSecurity ``restricted``: every pod the chart or the dispatcher makes is
admitted there.

What stands in for what (no cluster DNS, no kube-proxy, one host network):
- ``redis.url`` and ``database.url`` are the tests' servers on 127.0.0.1.
- The ``helm test`` pod that reads ``<release>-metrics.<ns>.svc``: the node resolves that
  name to 127.0.0.1 (``/etc/hosts``), where kube-proxy would deliver the Service's port,
  given that the Service's port is the dispatcher's metrics port (``service.port`` =
  ``dispatcher.metricsPort`` here; the node gives a name only to such Services).
- Every pod shares the host's network, so two dispatcher pods cannot listen on one port:
  the upgrade moves the health and metrics ports along with maxInFlight (the Deployment's
  maxSurge 1 runs the old and the new pod side by side).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from contracts.keys import Keys
from tests.support.chart_node import ChartNode, running_chart_node
from tests.support.controlplane import ControlPlane
from tests.support.helm_release import Release
from tests.support.hosts import podman
from tests.support.images import Image, ensure_image
from tests.support.keys import make_keypair
from tests.support.services import PostgresServer, RedisServer, free_port

NODE = "node-chart"
TAINT = {"key": "infra-service.io/chart-lifecycle", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": "true",
              "effect": "NoSchedule"}
PLACEMENT = {"nodeSelector": {"kubernetes.io/hostname": NODE}, "tolerations": [TOLERATION]}
SECRET = "chart-secrets"
LEFT_BY_KUBERNETES = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
KINDS = "all,roles,rolebindings,networkpolicies,serviceaccounts,secrets,configmaps,pdb"


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return {c: ensure_image(c) for c in ("runner", "dispatcher")}


@pytest.fixture(scope="module")
def chart_node(control_plane: ControlPlane) -> Iterator[ChartNode]:
    """A tainted node: only the pods of this module (which tolerate it) land there."""
    with running_chart_node(control_plane, NODE, taints=[TAINT]) as node:
        yield node
        assert not node.errors, f"the node agent failed: {node.errors}"


def image_values(image: Image) -> dict[str, str]:
    repository, tag = image.ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}


def chart_values(images: dict[str, Image], redis_srv: RedisServer, database_url: str,
                 prefix: str, public_key: str) -> dict[str, Any]:
    health, metrics = free_port(), free_port()
    return {
        "existingSecret": SECRET,
        "orchestratorSshPublicKey": public_key,
        "redis": {"url": redis_srv.url, "keyPrefix": prefix,
                  "password": {"key": "redis-password", "optional": False}},
        "database": {"url": database_url, "connectTimeoutSeconds": 5,
                     "password": {"key": "database-password", "optional": False}},
        "dispatcher": {"replicaCount": 1, "image": image_values(images["dispatcher"]),
                       "healthPort": health, "metricsPort": metrics, "maxInFlight": 10,
                       "pendingTimeoutSeconds": 60, "shutdownTimeoutSeconds": 5,
                       "readinessProbe": {"initialDelaySeconds": 1, "periodSeconds": 1,
                                          "timeoutSeconds": 3, "failureThreshold": 2},
                       **PLACEMENT},
        "service": {"port": metrics},
        "runner": {"image": image_values(images["runner"]), "ttlSecondsAfterFinished": 600,
                   "activeDeadlineSeconds": 600, "playTimeoutSeconds": 60, **PLACEMENT},
        # The policies are objects only here (no CNI enforces them); they must install and
        # go away with the release.
        "networkPolicy": {"enabled": True},
    }


class Lifecycle:
    """The release under test and what explains a failure."""

    def __init__(self, rel: Release, node: ChartNode) -> None:
        self.rel = rel
        self.node = node
        self.cp = rel.cp
        self.ns = rel.namespace

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl("-n", self.ns, *args, "-o", "json").stdout)

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kubectl_json("get", "pods")["items"]
        return items

    def explain(self) -> str:
        parts = [self.cp.kubectl("-n", self.ns, "get", "all,events", "-o", "wide",
                                 check=False).stdout,
                 self.rel.helm("status", self.rel.name, check=False).stdout,
                 self.rel.helm("history", self.rel.name, check=False).stdout,
                 self.cp.kubectl("-n", self.ns, "describe", "pods", check=False).stdout[-6000:]]
        for pod in self.pods():
            name = pod["metadata"]["name"]
            parts.append(f"--- log of {name} (node {NODE}):\n"
                         f"{self.node.log_of(self.ns, name)[-3000:]}")
        parts.append(f"node errors: {self.node.errors}")
        return "\n".join(parts)

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.3)
        raise AssertionError(f"{what}: not seen within {timeout:g} s\n{self.explain()}")

    def helm_ok(self, done: Any, what: str) -> str:
        if done.returncode != 0:
            raise AssertionError(f"{what} exited {done.returncode}:\n{done.stderr}"
                                 f"{done.stdout}\n{self.explain()}")
        return str(done.stdout) + str(done.stderr)

    def dispatcher_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods()
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == "dispatcher"
                and not p["metadata"].get("deletionTimestamp")]

    def ready_dispatcher(self, env_name: str, env_value: str) -> dict[str, Any]:
        """The one dispatcher pod, Ready, whose template says ``env_name=env_value``, once
        every other dispatcher pod is gone (the rollout is over)."""
        def one() -> dict[str, Any] | None:
            pods = self.pods()
            dispatchers = [p for p in pods if p["metadata"]["labels"].get(
                "app.kubernetes.io/component") == "dispatcher"]
            if len(dispatchers) != 1:
                return None
            pod = dispatchers[0]
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod.get("status", {}).get("conditions") or [])
            return pod if ready and env.get(env_name) == env_value else None
        pod: dict[str, Any] = self.wait(one, 120, f"one Ready dispatcher pod with {env_name}="
                                                  f"{env_value}")
        return pod

    def process_env(self, pod: dict[str, Any]) -> dict[str, str]:
        """The environment of the pod's running container, as podman started it."""
        found = podman("ps", "--filter", f"label=io.kubernetes.pod.uid={pod['metadata']['uid']}",
                       "--format", "{{.ID}}").stdout.split()
        assert len(found) == 1, f"containers of {pod['metadata']['name']}: {found}"
        env = podman("inspect", "--format", "{{json .Config.Env}}", found[0]).stdout
        return dict(item.split("=", 1) for item in json.loads(env))

    def refused(self) -> list[str]:
        events = self.kubectl_json("get", "events")["items"]
        return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message']}"
                for e in events if e["reason"] in ("FailedCreate", "FailedScheduling")]


def every_kind(cp: ControlPlane) -> str:
    """Every namespaced kind the API server lists but Events (a record, not an object of
    the release): what `helm uninstall` must leave empty."""
    kinds = cp.kubectl("api-resources", "--namespaced=true", "--verbs=list", "-o",
                       "name").stdout.split()
    return ",".join(k for k in kinds if k not in ("events", "events.events.k8s.io"))


def tables(pg_srv: PostgresServer, database: str) -> set[str]:
    async def read() -> set[str]:
        conn = await asyncpg.connect(pg_srv.dsn(database), password=pg_srv.password)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = "
                                    "'public'")
        finally:
            await conn.close()
        return {r["tablename"] for r in rows}
    return asyncio.run(read())


@pytest.fixture
def lifecycle(control_plane: ControlPlane, kube_ns: str, chart_node: ChartNode,
              ) -> Iterator[Lifecycle]:
    rel = Release(control_plane, kube_ns)
    life = Lifecycle(rel, chart_node)
    yield life
    rel.helm("uninstall", rel.name, "--wait", check=False)


def create_secret(life: Lifecycle, redis_srv: RedisServer, pg_srv: PostgresServer,
                  private_key: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
              "stringData": {"redis-password": redis_srv.password or "",
                             "database-password": pg_srv.password,
                             "ssh-private-key": private_key}}
    life.cp.kubectl("-n", life.ns, "create", "-f", "-", stdin=json.dumps(secret))


def test_the_schema_refuses_a_bad_value_before_anything_is_installed(
        control_plane: ControlPlane, kube_ns: str, images: dict[str, Image],
        redis_srv: RedisServer) -> None:
    rel = Release(control_plane, kube_ns)
    values = chart_values(images, redis_srv, "postgresql://infra@127.0.0.1:5432/infra",
                          "unused", "ssh-ed25519 AAAA test")
    values["runner"]["resources"] = {"limits": {"memory": "1 GB"}}
    done = rel.install(values)
    assert done.returncode != 0, done.stdout
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert "runner.resources.limits.memory" in done.stderr.replace("/", "."), done.stderr
    assert "1 GB" in done.stderr or "pattern" in done.stderr, done.stderr
    assert rel.helm("list", "-a", "-q").stdout.strip() == ""
    left = json.loads(control_plane.kubectl("-n", kube_ns, "get", KINDS, "-o",
                                            "json").stdout)["items"]
    assert {(o["kind"], o["metadata"]["name"]) for o in left} <= LEFT_BY_KUBERNETES, left


def test_install_test_upgrade_rollback_uninstall(lifecycle: Lifecycle, images: dict[str, Image],
                                                redis_srv: RedisServer, pg_srv: PostgresServer,
                                                tmp_path: Path) -> None:
    life, rel = lifecycle, lifecycle.rel
    database = f"chart_{life.ns.replace('-', '_')}"
    database_url = pg_srv.ensure_database(database)
    prefix = f"chart-{life.ns}"
    keys = make_keypair(tmp_path, "provisioner")
    create_secret(life, redis_srv, pg_srv, keys.private)
    values = chart_values(images, redis_srv, database_url, prefix,
                          make_keypair(tmp_path, "orchestrator").public)

    labels = life.kubectl_json("get", "namespace", life.ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels

    # -- install: the migration hook first, then the release's objects ----------------------
    laps: list[tuple[str, float]] = [("", time.monotonic())]

    def lap(step: str) -> None:
        laps.append((step, time.monotonic()))

    out = life.helm_ok(rel.install(values, "--wait", "--timeout", "180s"), "helm install")
    assert {"schema_migrations", "servers"} <= tables(pg_srv, database), out
    jobs = life.kubectl_json("get", "jobs")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [], "the hook Job outlived its success"
    events = life.kubectl_json("get", "events")["items"]
    migrate = f"{rel.fullname}-migrate"
    assert any(e["involvedObject"]["name"] == migrate and e["reason"] == "Completed"
               for e in events), f"no Completed event of {migrate}\n{life.explain()}"
    ran_here = {e["involvedObject"]["name"] for e in events
                if e["reason"] == "Started" and e.get("source", {}).get("host") == NODE}
    assert any(name.startswith(migrate) for name in ran_here), ran_here
    policies = [n["metadata"]["name"] for n in life.kubectl_json("get", "networkpolicies")["items"]]
    assert migrate not in policies, f"the migration hook's policy outlived it: {policies}"

    lap("install")

    # -- the dispatcher in its pod, with the chart's ServiceAccount -------------------------
    pod = life.ready_dispatcher("DISPATCHER_MAX_IN_FLIGHT", "10")
    assert pod["spec"]["nodeName"] == NODE
    assert pod["spec"]["containers"][0]["image"] == images["dispatcher"].ref
    assert pod["spec"]["serviceAccountName"] == rel.fullname
    # Ready is the probe's /readyz: every check passed, among them the dispatcher's own
    # access review of its grants with the pod's token (rbac).
    health = values["dispatcher"]["healthPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=5) as reply:
        checks = json.loads(reply.read())
    assert checks["rbac"] is True and all(checks.values()), checks
    assert any("serviceAccountToken" in s for v in pod["spec"]["volumes"]
               for s in (v.get("projected") or {}).get("sources", [])), pod["spec"]["volumes"]
    request = f"req-{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(redis_srv.url, password=redis_srv.password) as client:
        client.lpush(Keys(prefix).queue, json.dumps({"server_handle": "web-chart",
                                                     "request_id": request}))
    job = life.wait(lambda: [j for j in life.kubectl_json("get", "jobs")["items"]
                             if j["metadata"]["labels"].get("infra-service.io/request-id")
                             == request], 60, "the runner Job for the pushed message")[0]
    job_name = job["metadata"]["name"]
    runner = life.wait(lambda: [p for p in life.pods()
                                if p["metadata"]["labels"].get("job-name") == job_name
                                and p["spec"].get("nodeName") == NODE], 60,
                       "the runner pod on the chart's node")[0]
    assert runner["spec"]["serviceAccountName"] == f"{rel.fullname}-runner"
    assert runner["spec"]["containers"][0]["image"] == images["runner"].ref
    # The runner in its pod read its Secrets and the schema the hook applied: the server is
    # simply not registered (the result a real unknown handle gets).
    def result() -> dict[str, Any] | None:
        with redis.Redis.from_url(redis_srv.url, password=redis_srv.password) as client:
            entries = [json.loads(e) for e in client.lrange(Keys(prefix).results, 0, -1)]
        return next((e for e in entries if e["request_id"] == request), None)
    published = life.wait(result, 60, "the runner's result in Redis")
    assert (published["reported_by"], published["error"]["kind"]) == (
        "runner", "unknown_server"), published
    log = life.node.log_of(life.ns, pod["metadata"]["name"])
    assert "Forbidden" not in log and "missing RBAC grants" not in log, log[-3000:]
    assert life.refused() == [], life.refused()

    lap("dispatcher and a runner Job")

    # -- helm test ----------------------------------------------------------------------------
    out = life.helm_ok(rel.helm("test", rel.name, "--timeout", "120s", check=False),
                       "helm test")
    assert "Phase:          Succeeded" in out, out
    for check in ("-test-dispatcher", "-test-redis", "-test-postgres"):
        assert f"{rel.fullname}{check}" in out, out
    # helm prints the passing pods' output (hook-output-log-policy), then deletes them and
    # their policy (hook-succeeded): `helm uninstall` never deletes hooks.
    assert "OK: dispatcher ready" in out and "OK: PostgreSQL" in out, out
    # the test pod read the metrics Service by its name (resolved by the node, see above)
    assert f"{rel.fullname}-metrics.{life.ns}.svc:{values['service']['port']}" in out, out
    assert life.refused() == [], life.refused()
    leftover = [p["metadata"]["name"] for p in life.pods()
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == "test"]
    policies = [n["metadata"]["name"] for n in life.kubectl_json("get", "networkpolicies")["items"]]
    assert leftover == [] and not [p for p in policies if "-test-" in p], (leftover, policies)

    lap("helm test")

    # -- upgrade: a new maxInFlight rolls the Deployment and reaches the process -------------
    old = pod["metadata"]["name"]
    health, metrics = free_port(), free_port()
    upgraded = json.loads(json.dumps(values))
    upgraded["dispatcher"].update(maxInFlight=3, healthPort=health, metricsPort=metrics)
    upgraded["service"]["port"] = metrics
    life.helm_ok(rel.upgrade(upgraded, "--wait", "--timeout", "180s"), "helm upgrade")
    pod = life.ready_dispatcher("DISPATCHER_MAX_IN_FLIGHT", "3")
    assert pod["metadata"]["name"] != old
    assert life.process_env(pod)["DISPATCHER_MAX_IN_FLIGHT"] == "3"
    deployment = rel.get("deployment", rel.fullname)
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    completed = [e for e in life.kubectl_json("get", "events")["items"]
                 if e["involvedObject"]["name"] == migrate and e["reason"] == "Completed"]
    assert len(completed) == 2, f"the pre-upgrade migration did not run again: {completed}"
    assert life.kubectl_json("get", "jobs,networkpolicies", "-l",
                             "app.kubernetes.io/component=migrations")["items"] == []

    lap("upgrade")

    # -- rollback to revision 1 -------------------------------------------------------------
    life.helm_ok(rel.helm("rollback", rel.name, "1", "--wait", "--timeout", "180s",
                          check=False), "helm rollback")
    pod = life.ready_dispatcher("DISPATCHER_MAX_IN_FLIGHT", "10")
    assert life.process_env(pod)["DISPATCHER_MAX_IN_FLIGHT"] == "10"
    history = json.loads(rel.helm("history", rel.name, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history][-1] == (3, "deployed"), history
    assert "Rollback to 1" in history[-1]["description"], history
    assert life.refused() == [], life.refused()

    lap("rollback")

    # -- uninstall: nothing of the release is left ------------------------------------------
    life.helm_ok(rel.helm("uninstall", rel.name, "--wait", "--timeout", "120s", check=False),
                 "helm uninstall")
    # The runner Jobs (and their pods) are the dispatcher's, not the release's: they stay for
    # runner.ttlSecondsAfterFinished, their logs being the run's record.
    runs = {("Job", job_name), ("Pod", runner["metadata"]["name"])}

    def leftovers() -> set[tuple[str, str]]:
        items = life.kubectl_json("get", every_kind(life.cp))["items"]
        return {(o["kind"], o["metadata"]["name"]) for o in items} - LEFT_BY_KUBERNETES - {
            ("Secret", SECRET)} - runs

    try:
        life.wait(lambda: not leftovers(), 60, "an empty namespace after helm uninstall")
    except AssertionError:
        raise AssertionError(f"left behind by helm uninstall: {sorted(leftovers())}") from None
    kept = life.kubectl_json("get", "jobs,pods")["items"]
    assert {(o["kind"], o["metadata"]["name"]) for o in kept} == runs, kept
    assert all(o["metadata"]["labels"]["app.kubernetes.io/managed-by"]
               == "infra-service-dispatcher" for o in kept if o["kind"] == "Job"), kept
    lap("uninstall")
    print("\n" + ", ".join(f"{step} {end - start:.1f} s"
                           for (_, start), (step, end) in itertools.pairwise(laps)))
