"""One full run of the runner image against a disposable host, real PostgreSQL and Redis.

The container gets exactly what Kubernetes would give the pod: the Job is built by the
dispatcher's own code from the settings the Helm chart renders, and its env (plain values,
secretKeyRefs resolved from a stand-in Secret store, the pod-name fieldRef) and args are
applied to ``podman run`` with a read-only root and an emptyDir-like /scratch.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis

from contracts.keys import Keys
from tests.support.chart import job_from_chart, render
from tests.support.hosts import Host, vps_host
from tests.support.images import Image, run
from tests.support.keys import Keypair, make_keypair
from tests.support.services import PostgresServer, RedisServer

pytestmark = pytest.mark.hosts

DB_NAME = "image_run"
SECRET_NAME = "infra-service-test"
# The play the image runs: the packaged tree's deploy-key play (the full setup play is
# exercised by the Ansible suite; here the point is the image and its wiring).
PLAYBOOK = "playbooks/provision_access.yml"


@pytest.fixture(scope="module")
def database(pg_srv: PostgresServer) -> str:
    return pg_srv.ensure_database(DB_NAME)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keypair]:
    directory = tmp_path_factory.mktemp("image-keys")
    return {name: make_keypair(directory, name) for name in ("provisioner", "orchestrator")}


@pytest.fixture(scope="module")
def host(keys: dict[str, Keypair]) -> Iterator[Host]:
    with vps_host(name_prefix="infra-image") as h:
        h.authorize_key(keys["provisioner"].public)
        yield h


def resolve_env(job: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """What the kubelet makes of the container's env (the subset the Job uses)."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif ref := var["valueFrom"].get("secretKeyRef"):
            value = secrets.get((ref["name"], ref["key"]))
            if value is None:
                assert ref["optional"], f"Secret {ref['name']}/{ref['key']} is missing"
                continue
            env[var["name"]] = value
        elif var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            env[var["name"]] = f"{job['metadata']['name']}-x7k2q"
    assert not container["envFrom"]
    return env


def test_full_run_from_the_image(runner_image: Image, host: Host, database: str,
                                 pg_srv: PostgresServer, redis_srv: RedisServer,
                                 keys: dict[str, Keypair],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    handle = f"img-{uuid.uuid4().hex[:6]}"
    secrets = {(SECRET_NAME, "database-password"): pg_srv.password,
               (SECRET_NAME, "redis-password"): redis_srv.password or "",
               (SECRET_NAME, "ssh-private-key"): keys["provisioner"].private}
    db_env = {"DATABASE_URL": database, "DATABASE_PASSWORD": pg_srv.password}

    # The image's own CLI prepares the database, as an operator would.
    done = run(runner_image, "migrate", env=db_env, network_host=True)
    assert done.returncode == 0, done.stderr
    done = run(runner_image, "register-server", "--handle", handle, "--address", host.address,
               "--port", str(host.ssh_port), env=db_env, network_host=True)
    assert done.returncode == 0, done.stderr

    rendered = render({
        "existingSecret": SECRET_NAME,
        "orchestratorSshPublicKey": keys["orchestrator"].public,
        "redis": {"url": redis_srv.url, "password": {"key": "redis-password"}},
        "database": {"url": database, "password": {"key": "database-password"}},
        "runner": {"image": {"repository": runner_image.ref.rsplit(":", 1)[0],
                             "tag": runner_image.ref.rsplit(":", 1)[1]},
                   "env": {"SETUP_PLAYBOOK": PLAYBOOK, "SSH_CONNECT_TIMEOUT": "5"}},
    })
    job = job_from_chart(rendered, monkeypatch, server_handle=handle)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == runner_image.ref
    env = resolve_env(job, secrets)
    request_id = json.loads(env["PROVISIONER_MESSAGE"])["request_id"]
    user = job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]

    # As Kubernetes does: the image's entrypoint (tini) with the Job's args.
    assert "command" not in container
    done = run(runner_image, *container["args"], env=env, network_host=True, timeout=300,
               extra=("--user", f"{user}:{user}"))
    everything = done.stdout + done.stderr
    client = redis.Redis.from_url(redis_srv.url, password=redis_srv.password)
    try:
        entries = [json.loads(e) for e in client.lrange(Keys().results, 0, -1)]
    finally:
        client.close()
    mine = [e for e in entries if e.get("request_id") == request_id]
    assert done.returncode == 0, f"{everything}\nresult: {mine}"
    (result,) = mine
    assert result["status"] == "succeeded", result
    assert result["job_name"] == job["metadata"]["name"]
    assert result["recap"]["failed"] == 0 and result["recap"]["ok"] >= 1

    async def status() -> str:
        conn = await asyncpg.connect(database, password=pg_srv.password)
        try:
            return await conn.fetchval("SELECT status FROM servers WHERE handle = $1", handle)
        finally:
            await conn.close()

    assert asyncio.run(status()) == "READY"
    authorized = host.exec("cat /root/.ssh/authorized_keys").stdout.splitlines()
    assert keys["orchestrator"].public in authorized

    # JSON-lines logs naming the run; no secret in logs or result.
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert logs and all(line.get("request_id") == request_id for line in logs)
    # The image ships the play's start gate: ansible-playbook started ahead of the SSH
    # check and ran its first play only once released.
    order = [line["event"] for line in logs]
    assert next(e for e in logs if e["event"] == "ansible status").get("gated") is True
    assert (order.index("ansible status") < order.index("ssh check passed")
            < order.index("play released") < order.index("ansible event")), order
    for value in secrets.values():
        if value:
            assert value not in everything and value not in json.dumps(result)
