"""Plan mode end to end: the runner plans the project's setup_server.yml on a real host.

One host goes through what an SRE would do: a plan on the fresh host, a real run, then a
plan on the host the run converged, and a plan of the recovery plays there. The fixture
runs the four (one converge, a few minutes) and keeps what each left; the tests read it.

What a plan must leave alone is measured from outside the runner: the host's /etc (every
file's checksum, every directory's and link's mode and owner), every authorized_keys file,
the firewall ruleset, Docker's state and the installed packages; and the server's row in
PostgreSQL, column by column.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis as sync_redis

from contracts.keys import Keys
from tests.ansible.conftest import HOST_DOCKER_VARS, TMPFS_MOUNTS
from tests.runner.conftest import (
    REPO,
    Keypair,
    Runner,
    RunnerDb,
    RunResult,
    message,
    runner_environment,
    unique_handle,
)
from tests.runner.test_ssh_port_contract import host_on_ports
from tests.support.hosts import Host
from tests.support.provider_api import ProviderApi
from tests.support.result_schema import assert_published_shape
from tests.support.services import RedisServer

pytestmark = [pytest.mark.hosts, pytest.mark.real_setup_play]

# What a plan must not change, read on the host as root. Docker's state: its data directory
# and, once it is installed, what the daemon holds.
SNAPSHOT_COMMANDS = {
    "etc files": "find /etc -xdev -type f -exec sha256sum {} + | sort -k 2",
    "etc tree": r"find /etc -xdev ! -type f -printf '%y %m %u:%g %p -> %l\n' | sort -k 4",
    "authorized keys": "find / -xdev -name authorized_keys -type f -exec sha256sum {} + "
                       "2>/dev/null | sort -k 2",
    "firewall": "nft list ruleset",
    "docker data": "find /var/lib/docker -maxdepth 2 -printf '%y %m %p\n' 2>/dev/null | sort",
    "docker": "if command -v docker >/dev/null; then systemctl is-active docker; "
              "docker ps -a --format '{{.ID}} {{.Image}} {{.Status}}'; "
              "docker images -q | sort; else echo 'no docker'; fi",
    "packages": "dpkg-query -W -f '${Package} ${Version} ${Status}\n'",
    "units": "systemctl list-unit-files --no-legend --no-pager | sort",
}


def snapshot(host: Host) -> dict[str, str]:
    return {name: host.exec(command, check=False).stdout
            for name, command in SNAPSHOT_COMMANDS.items()}


def server_row(runner_db: RunnerDb, handle: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        conn = await runner_db.connect()
        try:
            row = await conn.fetchrow("SELECT * FROM servers WHERE handle = $1", handle)
        finally:
            await conn.close()
        assert row is not None
        return dict(row)

    return asyncio.run(read())


def published_result(runner: Runner, request_id: str) -> dict[str, Any]:
    client = sync_redis.Redis.from_url(runner.env["REDIS_URL"],
                                       password=runner.env.get("REDIS_PASSWORD") or None)
    try:
        entries = [json.loads(e) for e in client.lrange(runner.keys.results, 0, -1)]
    finally:
        client.close()
    mine = [e for e in entries if e.get("request_id") == request_id]
    assert len(mine) == 1, f"expected one result for {request_id}, got {mine}"
    return assert_published_shape(mine[0])


def changed_tasks(res: RunResult) -> set[str]:
    """The tasks a real run changed, from the runner's log of ansible-runner's events."""
    return {line["task"] for line in res.events("ansible event")
            if line.get("ansible_event") == "runner_on_ok" and line.get("changed") is True}


def planned_tasks(result: dict[str, Any]) -> set[str]:
    return {task["task"] for task in result["plan"]["tasks"]}


@dataclass
class Journey:
    host: Host
    fresh_before: dict[str, str]
    fresh_after: dict[str, str]
    row_before: dict[str, Any]
    row_after: dict[str, Any]
    fresh_plan: RunResult
    fresh_result: dict[str, Any]
    real_run: RunResult
    real_result: dict[str, Any]
    converged_plan: RunResult
    converged_result: dict[str, Any]
    converged_row_before: dict[str, Any]
    converged_row_after: dict[str, Any]
    recovery_plan: RunResult
    recovery_result: dict[str, Any]


@pytest.fixture(scope="module")
def journey(runner_db: RunnerDb, redis_srv: RedisServer, provisioner_key: Keypair,
            orchestrator_key: Keypair, scratch_root: Any, provider: ProviderApi
            ) -> Iterator[Journey]:
    """A fresh host (the provider put the provisioner's key in root's authorized_keys, as a
    reinstall does; sshd on the port it is registered with): plan, run, plan again."""
    runner = Runner(runner_environment(runner_db, redis_srv, provisioner_key,
                                       orchestrator_key, scratch_root, provider), Keys())
    play_vars = {**HOST_DOCKER_VARS,
                 "deploy_key_additional_public_keys": [provisioner_key.public]}
    real = {"PLAY_PROJECT_DIR": str(REPO / "ansible"),
            "SETUP_PLAYBOOK": "playbooks/setup_server.yml", "PLAY_TIMEOUT": "1500",
            "RECOVERY_PLAYBOOKS": "playbooks/recovery_docker.yml,playbooks/recovery_disk_space.yml",
            "PLAY_VARS": json.dumps(play_vars)}
    with host_on_ports(provisioner_key, privileged=True, extra_args=TMPFS_MOUNTS) as (
            host, port, _):
        handle = unique_handle("plan")
        runner.register(handle, host.address, port)

        def run(**flags: Any) -> tuple[RunResult, dict[str, Any]]:
            msg = message(handle, **flags)
            res = runner.run(msg, timeout=1800, **real)
            return res, published_result(runner, msg["request_id"])

        fresh_before, row_before = snapshot(host), server_row(runner_db, handle)
        fresh_plan, fresh_result = run(plan=True)
        fresh_after, row_after = snapshot(host), server_row(runner_db, handle)
        real_run, real_result = run()
        assert real_run.rc == 0, real_run.explain
        converged_row_before = server_row(runner_db, handle)
        converged_plan, converged_result = run(plan=True)
        converged_row_after = server_row(runner_db, handle)
        recovery_plan, recovery_result = run(plan=True, is_recovery=True)
        yield Journey(host, fresh_before, fresh_after, row_before, row_after, fresh_plan,
                      fresh_result, real_run, real_result, converged_plan, converged_result,
                      converged_row_before, converged_row_after, recovery_plan,
                      recovery_result)


def test_a_plan_on_a_fresh_host_changes_nothing(journey: Journey) -> None:
    assert journey.fresh_plan.rc == 0, journey.fresh_plan.explain
    assert journey.fresh_result["status"] == "planned", journey.fresh_plan.explain
    # The result says it is a plan's, and the real run's that it is a run's.
    assert (journey.fresh_result["mode"], journey.real_result["mode"]) == ("plan", "run")
    for name in SNAPSHOT_COMMANDS:
        assert journey.fresh_after[name] == journey.fresh_before[name], name
    # No key was installed and no host key recorded: the runner never said it did.
    said = {line.get("event") for line in journey.fresh_plan.logs}
    assert "planning: the server is not claimed" in said
    assert not {"server claimed", "host key recorded", "server status written"} & said
    assert "deploy_key_changed" not in journey.fresh_result["details"]


def test_the_server_row_is_unchanged_by_a_plan(journey: Journey) -> None:
    assert journey.row_after == journey.row_before
    assert journey.converged_row_after == journey.converged_row_before
    assert journey.converged_row_before["status"] == "READY"


def test_a_plan_on_a_fresh_host_lists_what_would_change(journey: Journey) -> None:
    plan = journey.fresh_result["plan"]
    verdicts = {task["task"]: task for task in plan["tasks"]}
    assert verdicts["Write daemon.json"]["verdict"] == "would_change"
    assert "/etc/docker/daemon.json" in verdicts["Write daemon.json"]["diff"]
    # The apt module cannot check without python3-apt, which the play installs first.
    assert verdicts["Install Docker"]["verdict"] == "unknown"
    assert verdicts["Install Docker"]["reason"].startswith("failed in check mode")
    assert plan["would_change"] > 0 and plan["unknown"] > 0
    assert plan["truncated"] is False


def test_every_task_a_real_run_changes_was_in_the_plan(journey: Journey) -> None:
    changed = changed_tasks(journey.real_run)
    assert changed, journey.real_run.explain
    assert changed - planned_tasks(journey.fresh_result) == set(), json.dumps(
        journey.fresh_result["plan"], indent=1)


def test_a_plan_on_a_converged_host_lists_nothing(journey: Journey) -> None:
    assert journey.converged_plan.rc == 0, journey.converged_plan.explain
    result = journey.converged_result
    assert result["status"] == "planned"
    assert result["plan"] == {"tasks": [], "would_change": 0, "unknown": 0,
                              "truncated": False}, json.dumps(result["plan"], indent=1)
    assert result["ssh_port"] == journey.real_result["ssh_port"]


def test_a_recovery_plan_on_a_healthy_host_lists_nothing(journey: Journey) -> None:
    assert journey.recovery_plan.rc == 0, journey.recovery_plan.explain
    result = journey.recovery_result
    assert (result["status"], result["action"], result["mode"]) == (
        "planned", "recovery", "plan")
    assert result["plan"]["tasks"] == [], json.dumps(result["plan"], indent=1)
    played = {line.get("playbook") for line in journey.recovery_plan.events("play finished")}
    assert played == {"recovery_docker.yml", "recovery_disk_space.yml"}
