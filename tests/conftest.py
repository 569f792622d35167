"""Shared fixtures: real Redis and PostgreSQL servers and a real Kubernetes control plane for
the whole session; a namespace of that control plane per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from contracts.connections import RedisSettings, create_redis
from contracts.keys import Keys
from tests.support import controlplane
from tests.support.controlplane import ControlPlane
from tests.support.kube_env import KubeEnv
from tests.support.kube_env import kube_env as open_kube_env
from tests.support.node import Node, running_node
from tests.support.services import PostgresServer, RedisServer, postgres_server, redis_server
from tests.support.status_node import StatusNode
from tests.support.status_node import status_node as running_status_node

# Fixtures that start or reach a real service: a test marked `unit` must use none of them,
# so `pytest -m unit` stays a seconds-long layer of pure logic.
SERVICE_FIXTURES = {"redis_srv", "redis_settings", "redis_client", "pg_srv", "runner_db", "db",
                    "db_env", "runner", "cluster", "start_dispatcher", "hosts", "host",
                    "converged", "provider", "server_db", "runner_image", "dispatcher_image",
                    "control_plane", "kube_ns", "kube_node", "status_node", "kube_env"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") is None:
            continue
        used = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses the service "
                                    f"fixtures {sorted(used)}; drop the unit mark")


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server(password=os.environ.get("TEST_REDIS_PASSWORD", "redis-test-secret")) as srv:
        yield srv


@pytest.fixture
def redis_settings(redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch) -> RedisSettings:
    monkeypatch.setenv("REDIS_URL", redis_srv.url)
    if redis_srv.password:
        monkeypatch.setenv("REDIS_PASSWORD", redis_srv.password)
    return RedisSettings()


@pytest.fixture
async def redis_client(redis_settings: RedisSettings) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(redis_settings)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def pg_srv() -> Iterator[PostgresServer]:
    with postgres_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler, once per session."""
    with controlplane.running() as cp:
        # Past the output capture: the start time belongs in CI's log.
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        line = f"kubernetes control plane started in {cp.started_in:.1f} s ({cp.server})"
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\n{line}")
        yield cp
        dead = [name for name, alive in cp.alive().items() if not alive]
        assert not dead, f"control plane components died during the session: {dead}"


@pytest.fixture(scope="session")
def kube_node(control_plane: ControlPlane) -> Iterator[Node]:
    """A node (tests/support/node/: the kubelet's part, pods as podman containers) that
    the scheduler binds the session's pods to."""
    with running_node(control_plane, "node-1") as node:
        yield node
        assert not node.errors, f"the node agent failed: {node.errors}"


@pytest.fixture
def kube_ns(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of its own for the test, enforcing PodSecurity ``restricted``."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name,
                          "pod-security.kubernetes.io/enforce=restricted",
                          "pod-security.kubernetes.io/enforce-version=latest")
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def status_node(control_plane: ControlPlane) -> Iterator[StatusNode]:
    """A node whose kubelet is the test (tests/support/status_node.py)."""
    with running_status_node(control_plane) as node:
        yield node


@pytest.fixture
def kube_env(control_plane: ControlPlane, kube_ns: str, status_node: StatusNode,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEnv]:
    """The test's namespace with the dispatcher's ServiceAccount behind the fault proxy."""
    with open_kube_env(control_plane, kube_ns, status_node,
                       tmp_path_factory.mktemp("kube")) as env:
        yield env
