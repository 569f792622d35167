"""What the end-to-end tests share: the database of servers, the cluster (emulator, Secrets,
node agent) and the waits on what the Scheduler would read (provisioner:results)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes.client
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.dispatcher.kube_support import NAMESPACE, Kube
from tests.dispatcher.support import DispatcherProcess, results, wait_until
from tests.e2e.node_agent import NodeAgent
from tests.runner.conftest import base_process_env, run_cli
from tests.support.services import PostgresServer

PLAYS = Path(__file__).resolve().parent / "plays"
PLAYS_MOUNT = "/plays"
DB_NAME = "e2e_tests"
RUNNER_SECRET = "infra-runner"
PROVIDER_SECRET = "infra-provider"
RESULT_TIMEOUT = 240  # a loaded 2-core machine runs a few runner containers at once

# start_dispatcher(runner_env=..., secret_env=..., replica=..., **DISPATCHER_VARIABLES)
StartDispatcher = Callable[..., DispatcherProcess]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ServerDb:
    """The runner's PostgreSQL database, prepared with the runner's own CLI."""

    server: PostgresServer

    @property
    def url(self) -> str:
        return self.server.dsn(DB_NAME)

    @property
    def env(self) -> dict[str, str]:
        return {**base_process_env(), "DATABASE_URL": self.url,
                "DATABASE_PASSWORD": self.server.password}

    def migrate(self) -> None:
        done = run_cli(["migrate"], self.env)
        assert done.returncode == 0, done.stderr

    def register(self, handle: str, address: str, port: int,
                 provider_server_id: str | None = None) -> None:
        args = ["register-server", "--handle", handle, "--address", address,
                "--port", str(port), "--user", "root"]
        if provider_server_id:
            args += ["--provider-server-id", provider_server_id]
        done = run_cli(args, self.env)
        assert done.returncode == 0, done.stderr

    async def row(self, handle: str) -> dict[str, Any]:
        conn = await asyncpg.connect(self.url, password=self.server.password)
        try:
            row = await conn.fetchrow("SELECT * FROM servers WHERE handle = $1", handle)
        finally:
            await conn.close()
        assert row is not None, f"server {handle} is not registered"
        return dict(row)


@dataclass
class Cluster:
    """The emulated API with the runner's Secrets, and the node that runs its pods."""

    kube: Kube
    node: NodeAgent
    secret_values: list[str]

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.kube.api_client)

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.kube.api_client)

    def objects(self, resource: str) -> list[dict[str, Any]]:
        return self.kube.emulator.control.objects(resource, NAMESPACE)

    def job(self, name: str) -> dict[str, Any]:
        return self.kube.kubelet.job(NAMESPACE, name)

    def pods_of(self, job_name: str) -> list[dict[str, Any]]:
        return [p for p in self.objects("pods")
                if p["metadata"]["labels"].get("job-name") == job_name]

    def event_reasons(self, name: str) -> list[str]:
        listed = self.core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={name}", _preload_content=False)
        return [e["reason"] for e in json.loads(listed.data)["items"]]

    def pod_log(self, pod_name: str) -> str:
        return self.core.read_namespaced_pod_log(pod_name, NAMESPACE)

    def stored_text(self) -> str:
        """Every Job, Pod and Event, and every pod log, as text (for secret scans)."""
        pods = self.objects("pods")
        logs = [self.pod_log(p["metadata"]["name"]) for p in pods
                if p["status"].get("phase") in ("Running", "Succeeded", "Failed")]
        return json.dumps([self.objects("jobs"), pods, self.objects("events"), logs])


async def wait_for_results(redis: aioredis.Redis, request_ids: list[str],
                           timeout: float = RESULT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """The result entry of each request, once all are there; fails on a second entry."""
    async def all_there() -> dict[str, dict[str, Any]] | None:
        entries = [r for r in await results(redis, Keys()) if r["request_id"] in request_ids]
        by_id: dict[str, dict[str, Any]] = {}
        for entry in entries:
            assert entry["request_id"] not in by_id, f"two results for one request: {entries}"
            by_id[entry["request_id"]] = entry
        return by_id if len(by_id) == len(request_ids) else None

    return await wait_until(all_there, timeout=timeout, interval=0.2,
                            what=f"results of {request_ids}")


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls a blocking ``predicate`` (in a thread) until it returns something true."""
    async def check() -> Any:
        return await asyncio.to_thread(predicate)
    return await wait_until(check, timeout=timeout, interval=0.2, what=what)
