"""Fixtures of the end-to-end tests.

Per package: the runner image (built once per content), a migrated database, SSH key pairs,
two disposable hosts, the provider API and the e2e node (tests/support/node/, tainted, with
the tests' plays mounted) registered with the session's real control plane. Per test: a
namespace of that control plane (PodSecurity ``restricted``) holding the runner's Secrets and
the dispatcher's ServiceAccount, an observer of its Jobs and pods, and a factory for
dispatcher processes configured the way the Helm chart configures them.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
import redis.asyncio as aioredis
from kubernetes.client.rest import ApiException

from tests.support.controlplane import ControlPlane
from tests.support.dispatch import DispatcherProcess
from tests.support.e2e import (
    DB_NAME,
    NODE_NAME,
    NODE_SELECTOR,
    NODE_TAINTS,
    NODE_TOLERATIONS,
    PLAYS,
    PLAYS_MOUNT,
    PROVIDER_SECRET,
    RUNNER_SECRET,
    Cluster,
    ServerDb,
    StartDispatcher,
    admin_client,
    observing,
    token_kubeconfig,
)
from tests.support.hosts import Host, podman, vps_host
from tests.support.images import Image, ensure_image
from tests.support.keys import Keypair, make_keypair
from tests.support.kube_env import grant_dispatcher
from tests.support.node import Node, running_node
from tests.support.provider_api import ProviderApi, provider_api
from tests.support.services import PostgresServer, RedisServer

HOSTS = 2


@pytest.fixture(scope="package")
def runner_image() -> Iterator[Image]:
    """The runner image, under a tag of these tests' own: another session on this machine
    that builds a newer runner image removes the older ``test-*`` tags (the node stand-in
    has no registry to pull a vanished image from, so a running test would fail)."""
    image = ensure_image("runner")
    pinned = f"{image.ref.rsplit(':', 1)[0]}:e2e-{uuid.uuid4().hex[:12]}"
    podman("tag", image.ref, pinned)
    try:
        yield Image(image.component, pinned, image.build_seconds)
    finally:
        podman("untag", pinned, check=False)


@pytest.fixture(scope="package")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keypair]:
    directory = tmp_path_factory.mktemp("e2e-keys")
    return {name: make_keypair(directory, name) for name in ("provisioner", "orchestrator")}


@pytest.fixture(scope="package")
def server_db(pg_srv: PostgresServer) -> ServerDb:
    pg_srv.ensure_database(DB_NAME)
    db = ServerDb(pg_srv)
    db.migrate()
    return db


@pytest.fixture(scope="package")
def hosts(ssh_keys: dict[str, Keypair]) -> Iterator[list[Host]]:
    """Shared by every test: each test registers its own server handles on them."""
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(vps_host(name_prefix="infra-e2e")) for _ in range(HOSTS)]
        for host in started:
            host.authorize_key(ssh_keys["provisioner"].public)
        yield started


@pytest.fixture(scope="package")
def provider() -> Iterator[ProviderApi]:
    with provider_api() as api:
        yield api


def _secret(name: str, data: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "Opaque", "stringData": data}


def _leak_probes(*secrets: dict[str, str]) -> list[str]:
    """Every secret value, and each line of multi-line ones (a leaked part of a key)."""
    probes = []
    for values in secrets:
        for value in values.values():
            probes += [value] if value else []
            probes += [line for line in value.splitlines()
                       if len(line) >= 16 and "PRIVATE KEY" not in line]
    return probes


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[pytest.TestReport]:
    """Keeps each phase's report on the test, so fixtures can tell a failed test."""
    report: pytest.TestReport = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


@pytest.fixture(scope="package")
def e2e_node(control_plane: ControlPlane) -> Iterator[Node]:
    """The node that runs these tests' runner pods, with the small plays mounted read-only;
    tainted, so no other test's pod lands there (and these Jobs select it)."""
    with running_node(control_plane, NODE_NAME, mounts={PLAYS_MOUNT: PLAYS},
                      taints=NODE_TAINTS) as node:
        yield node
        assert not node.errors, f"the e2e node failed: {node.errors}"


def _wait_default_service_account(core: kubernetes.client.CoreV1Api, namespace: str) -> None:
    """A new namespace's ``default`` ServiceAccount comes from a controller a moment later;
    until then the API server refuses pods (the runner pods run with it)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path, control_plane: ControlPlane,
            kube_ns: str, e2e_node: Node, pg_srv: PostgresServer, redis_srv: RedisServer,
            ssh_keys: dict[str, Keypair], provider: ProviderApi) -> Iterator[Cluster]:
    provider.reset()
    runner_secrets = {"database-password": pg_srv.password,
                      "redis-password": redis_srv.password or "",
                      "ssh-private-key": ssh_keys["provisioner"].private}
    provider_secrets = {"PROVIDER_API_USERNAME": provider.behaviour.username,
                        "PROVIDER_API_PASSWORD": provider.behaviour.password}
    token = grant_dispatcher(control_plane, kube_ns)
    kubeconfig = token_kubeconfig(control_plane, token, kube_ns, tmp_path / "dispatcher.kubeconfig")
    api = admin_client(control_plane)
    try:
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespaced_secret(kube_ns, _secret(RUNNER_SECRET, runner_secrets))
        core.create_namespaced_secret(kube_ns, _secret(PROVIDER_SECRET, provider_secrets))
        _wait_default_service_account(core, kube_ns)
        with observing(api, kube_ns) as observer:
            cluster = Cluster(control_plane, kube_ns, e2e_node, observer, api, kubeconfig,
                              [*_leak_probes(runner_secrets, provider_secrets), token])
            yield cluster
            if _failed(request):
                print(f"\n=== namespace {kube_ns} as the test ended ===\n{cluster.describe()}")
    finally:
        api.close()


@pytest.fixture
def start_dispatcher(request: pytest.FixtureRequest, cluster: Cluster, redis_srv: RedisServer,
                     redis_client: aioredis.Redis, server_db: ServerDb, runner_image: Image,
                     ssh_keys: dict[str, Keypair], provider: ProviderApi, tmp_path: Path
                     ) -> Iterator[StartDispatcher]:
    """Starts ``python -m dispatcher run`` against the cluster (Redis is empty already).

    ``runner_env`` changes the runner's plain environment (the chart's runner.env);
    other keyword arguments are dispatcher variables.
    """
    started: list[DispatcherProcess] = []

    def start(runner_env: dict[str, str] | None = None, replica: str = "r1",
              secret_env: dict[str, dict[str, str]] | None = None,
              **env: str) -> DispatcherProcess:
        job_env = {
            "REDIS_URL": redis_srv.url,
            "DATABASE_URL": server_db.url,
            "PLAY_PROJECT_DIR": PLAYS_MOUNT,
            "SETUP_PLAYBOOK": "playbooks/setup.yml",
            "RECOVERY_PLAYBOOKS": "playbooks/recovery_one.yml,playbooks/recovery_two.yml",
            "SSH_BACKOFF_BASE": "0.3",
            "SSH_CONNECT_TIMEOUT": "3",
            "SSH_COMMAND_TIMEOUT": "30",
            "PLAY_TIMEOUT": "180",
            "REPORT_BACKOFF_BASE": "0.2",
            "PROVIDER_API_URL": provider.url,
            "PROVIDER_POLL_INTERVAL": "0.2",
            "PROVIDER_REQUEST_TIMEOUT": "5",
            "REINSTALL_SSH_TIMEOUT": "60",
            # The runner's phases must fit the Jobs' 600 s deadline (else it refuses them).
            "PROVIDER_TASK_TIMEOUT": "120",
            "E2E_PLAY_SECONDS": "0",
            # Plays get none of the runner's environment unless it is named here.
            "PLAY_ENV_PASSTHROUGH": "E2E_PLAY_SECONDS",
            **(runner_env or {}),
        }
        secrets = {
            "DATABASE_PASSWORD": {"secret": RUNNER_SECRET, "key": "database-password"},
            "REDIS_PASSWORD": {"secret": RUNNER_SECRET, "key": "redis-password"},
            "SSH_PRIVATE_KEY": {"secret": RUNNER_SECRET, "key": "ssh-private-key"},
            **(secret_env or {}),
        }
        process = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            "DISPATCHER_KUBECONFIG": str(cluster.dispatcher_kubeconfig),
            "DISPATCHER_NAMESPACE": cluster.namespace,
            "DISPATCHER_JOB_NODE_SELECTOR": json.dumps(NODE_SELECTOR),
            "DISPATCHER_JOB_TOLERATIONS": json.dumps(NODE_TOLERATIONS),
            "DISPATCHER_HEARTBEAT_SECONDS": "0.5", "DISPATCHER_RECONCILE_SECONDS": "1",
            "DISPATCHER_API_RETRY_MAX_SECONDS": "1",
            "DISPATCHER_JOB_IMAGE": runner_image.ref,
            "DISPATCHER_JOB_ACTIVE_DEADLINE_SECONDS": "600",
            "DISPATCHER_JOB_ENV": json.dumps(job_env),
            "DISPATCHER_JOB_SECRET_ENV": json.dumps(secrets),
            "DISPATCHER_JOB_ENV_FROM_SECRETS": json.dumps([PROVIDER_SECRET]),
            "ORCHESTRATOR_SSH_PUBLIC_KEY": ssh_keys["orchestrator"].public,
            **env,
        }, tmp_path / f"dispatcher-{len(started)}.log", replica=replica).start()
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()
    if _failed(request):
        for process in started:
            tail = "\n".join(process.logs().splitlines()[-60:])
            print(f"\n=== {process.log_path.name} (last 60 lines) ===\n{tail}")
