"""The chart's RBAC proven by the real authorizer: the dispatcher, configured from the
Deployment the real helm installed and authenticated as the chart's ServiceAccount, works
with exactly the Role's grants, and without any single one of them fails in a way an SRE
can read.

The dispatcher runs as a process of the test with the Deployment's environment (values as
rendered, Secret references resolved from the Secret in the namespace, the pod name for
DISPATCHER_REPLICA_ID) and a kubeconfig holding a token of the chart's ServiceAccount from
the TokenRequest API: what its pod would hold. Redis is the tests' server on 127.0.0.1,
given to the chart as redis.url (no cluster DNS here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from dispatcher.kube.access import REQUIRED, Grant
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import DispatcherProcess
from tests.support.helm_release import Release
from tests.support.keys import make_keypair
from tests.support.services import RedisServer

SECRET = "infra-secrets"


def chart_values(redis_srv: RedisServer, public_key: str) -> dict[str, Any]:
    return {
        "existingSecret": SECRET,
        "orchestratorSshPublicKey": public_key,
        "redis": {"url": redis_srv.url, "password": {"key": "redis-password",
                                                     "optional": False}},
        "database": {"url": "postgresql://infra@127.0.0.1:5432/infra"},
        "dispatcher": {"replicaCount": 1, "pendingTimeoutSeconds": 30},
        "migrations": {"enabled": False},
    }


def resolve_env(env: list[dict[str, Any]], secrets: dict[str, dict[str, str]],
                pod_name: str) -> dict[str, str]:
    """The container environment as the kubelet would build it from the Deployment."""
    resolved: dict[str, str] = {}
    for var in env:
        if "value" in var:
            resolved[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", source
            resolved[var["name"]] = pod_name
        else:
            ref = source["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"])
            assert value is not None or ref.get("optional"), f"unresolvable: {ref}"
            if value is not None:
                resolved[var["name"]] = value
    return resolved


@pytest.fixture
def release(control_plane: ControlPlane, kube_ns: str, redis_srv: RedisServer,
            tmp_path: Path) -> Iterator[Release]:
    keys = make_keypair(tmp_path, "orchestrator")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
              "stringData": {"redis-password": redis_srv.password or "",
                             "ssh-private-key": "unused-by-the-dispatcher"}}
    control_plane.kubectl("-n", kube_ns, "create", "-f", "-", stdin=json.dumps(secret))
    rel = Release(control_plane, kube_ns)
    done = rel.install(chart_values(redis_srv, keys.public))
    assert done.returncode == 0, done.stderr + done.stdout
    yield rel
    rel.helm("uninstall", rel.name, check=False)


def dispatcher_for(rel: Release, tmp_path: Path, name: str = "r1") -> DispatcherProcess:
    deployment = rel.get("deployment", rel.fullname)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret = rel.get("secret", SECRET)
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    env = resolve_env(container["env"], {SECRET: data}, f"{rel.fullname}-{name}")
    env["DISPATCHER_KUBECONFIG"] = str(rel.service_account_kubeconfig(tmp_path))
    env["DISPATCHER_RECONCILE_SECONDS"] = "1"
    process = DispatcherProcess(env, tmp_path / f"dispatcher-{name}.log", replica=name)
    # The health and metrics ports are the test's free ones, not the pod's.
    process.env["DISPATCHER_HEALTH_PORT"] = str(process.health_port)
    process.env["DISPATCHER_METRICS_PORT"] = str(process.metrics_port)
    process.env["DISPATCHER_REPLICA_ID"] = name
    return process.start()


async def wait_for(check: Any, timeout: float, what: str, explain: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check() if asyncio.iscoroutinefunction(check) else check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s\n{explain()}")


def jobs_in(rel: Release) -> list[dict[str, Any]]:
    out = rel.cp.kubectl("-n", rel.namespace, "get", "jobs", "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_every_chart_pod_is_admitted_under_restricted(release: Release) -> None:
    """The namespace enforces PodSecurity restricted; the Deployment's pods exist (they stay
    Pending without a node) and no controller met a refusal."""
    rs_events = release.cp.kubectl("-n", release.namespace, "get", "events", "-o",
                                   "json").stdout
    refused = [e for e in json.loads(rs_events)["items"] if e["reason"] == "FailedCreate"]
    assert refused == [], refused
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pods = json.loads(release.cp.kubectl("-n", release.namespace, "get", "pods", "-o",
                                             "json").stdout)["items"]
        if pods:
            break
        time.sleep(0.2)
    assert [p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods] == [
        "dispatcher"]


async def test_the_chart_grants_are_enough(release: Release, redis_client: aioredis.Redis,
                                          tmp_path: Path) -> None:
    process = dispatcher_for(release, tmp_path)
    try:
        process.wait_ready(60)
        request = f"req-{uuid.uuid4().hex[:8]}"
        await redis_client.lpush(Keys().queue, json.dumps(
            {"server_handle": "web-rbac", "request_id": request}))
        job = await wait_for(
            lambda: [j for j in jobs_in(release)
                     if j["metadata"]["labels"].get("infra-service.io/request-id") == request],
            30, "the runner Job", process.logs)
        assert job[0]["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
        assert "Forbidden" not in process.logs() and "403" not in process.logs()
    finally:
        process.kill()


def role_grants(rel: Release) -> list[tuple[str, str, str]]:
    role = rel.get("role", rel.fullname)
    return [(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]]


def without(rel: Release, grant: tuple[str, str, str]) -> None:
    role = rel.get("role", rel.fullname)
    group, resource, verb = grant
    rules = []
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
        if rule["verbs"]:
            rules.append(rule)
    patch = json.dumps([{"op": "replace", "path": "/rules", "value": rules}])
    rel.cp.kubectl("-n", rel.namespace, "patch", "role", rel.fullname, "--type", "json",
                   "-p", patch)


def test_the_role_grants_exactly_what_the_dispatcher_calls(release: Release) -> None:
    granted = set(role_grants(release))
    needed = {(g.group, g.resource, g.verb) for g in REQUIRED}
    assert granted == needed, (f"granted but never used: {sorted(granted - needed)}; "
                               f"used but not granted: {sorted(needed - granted)}")


@pytest.mark.parametrize("grant", REQUIRED, ids=lambda g: g.rule.replace(" ", "-"))
def test_without_any_one_grant_the_dispatcher_says_which(release: Release, grant: Grant,
                                                         tmp_path: Path) -> None:
    without(release, (grant.group, grant.resource, grant.verb))
    process = dispatcher_for(release, tmp_path)
    try:
        deadline = time.monotonic() + 60
        lines: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not lines:
            assert process.proc is not None and process.proc.poll() is None, process.logs()
            lines = [json.loads(ln) for ln in process.logs().splitlines()
                     if '"missing RBAC grants"' in ln]
            time.sleep(0.2)
        assert lines, f"no 'missing RBAC grants' line within 60 s:\n{process.logs()[-3000:]}"
        assert lines[0]["missing"] == [grant.rule], lines[0]
        assert grant.needed_for in lines[0]["error"] and "Role" in lines[0]["error"]
        code, body = process.http(process.health_port, "/readyz")
        assert code == 503 and json.loads(body)["rbac"] is False, body
    finally:
        process.kill()
