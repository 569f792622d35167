"""Fixtures of the end-to-end tests.

Per package: the runner image (built once per content), a migrated database, SSH key pairs,
two disposable hosts and the provider API. Per test: an emulator process holding the
runner's Secrets, a node agent running its pods, and a factory for dispatcher processes
configured the way the Helm chart configures them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
import redis.asyncio as aioredis

from tests.deploy.images import Image, ensure_image
from tests.dispatcher.kube_support import NAMESPACE, kube
from tests.dispatcher.support import DispatcherProcess
from tests.e2e.node_agent import NodeAgent
from tests.e2e.support import (
    DB_NAME,
    PLAYS,
    PLAYS_MOUNT,
    PROVIDER_SECRET,
    RUNNER_SECRET,
    Cluster,
    ServerDb,
    StartDispatcher,
)
from tests.support.hosts import Host, vps_host
from tests.support.keys import Keypair, make_keypair
from tests.support.provider_api import ProviderApi, provider_api
from tests.support.services import PostgresServer, RedisServer

HOSTS = 2


@pytest.fixture(scope="package")
def runner_image() -> Image:
    return ensure_image("runner")


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


@pytest.fixture
def cluster(tmp_path: Path, pg_srv: PostgresServer, redis_srv: RedisServer,
            ssh_keys: dict[str, Keypair], provider: ProviderApi) -> Iterator[Cluster]:
    provider.reset()
    runner_secrets = {"database-password": pg_srv.password,
                      "redis-password": redis_srv.password or "",
                      "ssh-private-key": ssh_keys["provisioner"].private}
    provider_secrets = {"PROVIDER_API_USERNAME": provider.behaviour.username,
                        "PROVIDER_API_PASSWORD": provider.behaviour.password}
    with kube(tmp_path, bookmark_interval=1) as k8s:
        core = kubernetes.client.CoreV1Api(k8s.api_client)
        core.create_namespaced_secret(NAMESPACE, _secret(RUNNER_SECRET, runner_secrets))
        core.create_namespaced_secret(NAMESPACE, _secret(PROVIDER_SECRET, provider_secrets))
        node_client = k8s.emulator.api_client()
        try:
            with NodeAgent(node_client, NAMESPACE, mounts={PLAYS_MOUNT: PLAYS}) as node:
                yield Cluster(k8s, node, _leak_probes(runner_secrets, provider_secrets))
        finally:
            node_client.close()
        assert not node.errors, f"the node agent failed: {node.errors}"


@pytest.fixture
def start_dispatcher(cluster: Cluster, redis_srv: RedisServer, redis_client: aioredis.Redis,
                     server_db: ServerDb, runner_image: Image, ssh_keys: dict[str, Keypair],
                     provider: ProviderApi, tmp_path: Path) -> Iterator[StartDispatcher]:
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
            "DISPATCHER_KUBECONFIG": str(cluster.kube.kubeconfig),
            "DISPATCHER_NAMESPACE": NAMESPACE,
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
