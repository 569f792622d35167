"""The chart's migration hook Job, as rendered, created in the real API server (admitted under
PodSecurity restricted, run by the real Job controller) and run on the e2e node stand-in (a
podman container of the real runner image) against a real PostgreSQL: a fresh database gets
the schema, and a second run (pre-upgrade) changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from runner_image.migrations import MIGRATIONS_DIR
from tests.support.chart import render
from tests.support.e2e import (
    NODE_SELECTOR,
    NODE_TOLERATIONS,
    RUNNER_SECRET,
    Cluster,
    unique,
    wait_for,
)
from tests.support.images import Image
from tests.support.services import PostgresServer

pytestmark = pytest.mark.hosts  # podman runs the hook's container


def _finished(cluster: Cluster, name: str) -> dict[str, Any] | None:
    job = cluster.job(name)
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return job
    return None


async def test_migration_hook_job_on_a_fresh_database(cluster: Cluster, runner_image: Image,
                                                      pg_srv: PostgresServer) -> None:
    database = unique("hook").replace("-", "_")
    await asyncio.to_thread(pg_srv.ensure_database, database)
    repository, tag = runner_image.ref.rsplit(":", 1)
    rendered = render({
        "existingSecret": RUNNER_SECRET,  # holds database-password, as the e2e cluster has it
        "database": {"url": pg_srv.dsn(database)},
        # The hook pod goes where the runner pods go (runner.nodeSelector / tolerations).
        "runner": {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                   "nodeSelector": NODE_SELECTOR, "tolerations": NODE_TOLERATIONS},
    }, namespace=cluster.namespace)
    hook = rendered.one("Job", "-migrate")
    name = hook["metadata"]["name"]

    def hook_gone() -> bool:
        return not any(j["metadata"]["name"] == name for j in cluster.objects("jobs"))

    for attempt in ("pre-install", "pre-upgrade"):
        # Helm deletes the previous hook Job first (before-hook-creation).
        if not hook_gone():
            cluster.batch.delete_namespaced_job(name, cluster.namespace,
                                                propagation_policy="Background")
            await wait_for(hook_gone, timeout=60, what="old hook Job gone")
        cluster.batch.create_namespaced_job(cluster.namespace, hook)
        job = await wait_for(lambda: _finished(cluster, name), timeout=180,
                             what=f"{attempt} hook Job finished")
        assert job["status"].get("succeeded") == 1, cluster.describe()
        (pod,) = [p for p in cluster.pods_of(name) if p["status"]["phase"] == "Succeeded"]
        assert pod["spec"]["nodeName"] == cluster.node.name
    conn = await asyncpg.connect(pg_srv.dsn(database), password=pg_srv.password)
    try:
        versions = [r["version"] for r in await conn.fetch(
            "SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()
    assert versions == [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]
    assert pg_srv.password not in cluster.stored_text()

