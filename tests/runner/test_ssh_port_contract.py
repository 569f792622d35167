"""The SSH port contract between the runner and its plays.

The runner passes ``infra_ssh_port`` (the port it connected on) always, and ``ssh_port``
only when a move is requested (``ssh_port`` in PLAY_VARS); the play reports
``infra_ssh.connect_port`` with set_stats; the runner stores that port with the final
status and says in the result whether it changed.

Hosts publish their SSH ports on the same number (``127.0.0.1:P -> P``), so "registered on
P" means sshd really listens on P inside the host and the runner connects to P.

``test_real_setup_play_keeps_and_moves_the_port`` runs the project's own setup_server.yml
and needs plays that follow the contract (the Ansible side of the contract).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.ansible.conftest import HOST_DOCKER_VARS, TMPFS_MOUNTS
from tests.runner.conftest import (
    REPO,
    Keypair,
    Runner,
    message,
    result_for,
    server_row,
    unique_handle,
)
from tests.support.hosts import Host, vps_host
from tests.support.services import free_port, wait_for_port

pytestmark = pytest.mark.hosts


@contextmanager
def host_on_ports(provisioner_key: Keypair, *, privileged: bool = False,
                  extra_args: tuple[str, ...] = ()) -> Iterator[tuple[Host, int, int]]:
    """A host whose sshd listens only on port A (published as 127.0.0.1:A), with port B
    published too (for a move); yields (host, A, B)."""
    first, second = free_port(), free_port()
    args = ("-p", f"127.0.0.1:{first}:{first}", "-p", f"127.0.0.1:{second}:{second}",
            *extra_args)
    with vps_host(name_prefix="infra-port", privileged=privileged, extra_args=args) as host:
        host.authorize_key(provisioner_key.public)
        host.write_file("/etc/ssh/sshd_config.d/10-port.conf", f"Port {first}\n")
        host.exec("systemctl restart ssh")
        wait_for_port(first, 60)
        yield host, first, second


def listening(host: Host) -> set[int]:
    out = host.exec("sshd -T").stdout
    return {int(line.split()[1]) for line in out.splitlines() if line.startswith("port ")}


async def run_and_check(runner: Runner, redis: aioredis.Redis, db, handle: str, *,
                        expect_port: int, changed: bool, **overrides: str) -> dict[str, Any]:
    msg = message(handle)
    res = runner.run(msg, timeout=1800, **overrides)
    assert res.rc == 0, res.explain
    result = await result_for(redis, runner.keys, msg["request_id"])
    assert result["status"] == "succeeded"
    assert result["ssh_port"] == expect_port and result["ssh_port_changed"] is changed
    row = await server_row(db, handle)
    assert row["ssh_port"] == expect_port and row["status"] == "READY"
    return result


async def test_port_is_kept_and_moved_only_on_request(
        runner: Runner, redis_client: aioredis.Redis, db, provisioner_key: Keypair) -> None:
    with host_on_ports(provisioner_key) as (host, first, second):
        handle = unique_handle("port")
        runner.register(handle, host.address, first)
        play = {"SETUP_PLAYBOOK": "playbooks/port_contract.yml"}
        # Two runs in a row: sshd stays where the server was registered.
        for _ in range(2):
            await run_and_check(runner, redis_client, db, handle, expect_port=first,
                                changed=False, **play)
            assert listening(host) == {first}
        # An explicit move: stored with the final status, said in the result.
        await run_and_check(runner, redis_client, db, handle, expect_port=second,
                            changed=True, PLAY_VARS=json.dumps({"ssh_port": second}), **play)
        assert listening(host) == {second}
        # The next run connects on the new port (the old one is closed).
        result = await run_and_check(runner, redis_client, db, handle, expect_port=second,
                                     changed=False, **play)
        assert result["details"]["auth_method"] == "publickey"


async def test_a_play_without_a_port_report_leaves_the_port_alone(
        runner: Runner, redis_client: aioredis.Redis, db, provisioner_key: Keypair) -> None:
    with host_on_ports(provisioner_key) as (host, first, _):
        handle = unique_handle("noreport")
        runner.register(handle, host.address, first)
        msg = message(handle)
        res = runner.run(msg, SETUP_PLAYBOOK="playbooks/recovery_one.yml")
        assert res.rc == 0, res.explain
        result = await result_for(redis_client, runner.keys, msg["request_id"])
        assert result["ssh_port"] == first and result["ssh_port_changed"] is False
        assert (await server_row(db, handle))["ssh_port"] == first


async def test_failed_runs_do_not_touch_the_port(
        runner: Runner, redis_client: aioredis.Redis, db) -> None:
    port = free_port()  # nothing listens: unreachable
    handle = unique_handle("unreach")
    runner.register(handle, "127.0.0.1", port)
    msg = message(handle)
    res = runner.run(msg, SSH_ATTEMPTS="1", PLAY_VARS=json.dumps({"ssh_port": 2200}))
    assert res.rc == 11, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["ssh_port"] is None and result["ssh_port_changed"] is None
    assert (await server_row(db, handle))["ssh_port"] == port


@pytest.mark.real_setup_play
async def test_real_setup_play_keeps_and_moves_the_port(
        runner: Runner, redis_client: aioredis.Redis, db, provisioner_key: Keypair,
        orchestrator_key: Keypair) -> None:
    """End to end with the project's setup_server.yml (Docker, firewall, SSH hardening): a
    host registered on a port other than 22 (2222 in production terms) is set up twice in a
    row, both runs succeed and sshd stays there; then an explicit move, and a run that
    connects on the new port."""
    with host_on_ports(provisioner_key, privileged=True, extra_args=TMPFS_MOUNTS) as (
            host, first, second):
        handle = unique_handle("realport")
        runner.register(handle, host.address, first)
        base_vars = {**HOST_DOCKER_VARS,
                     "deploy_key_additional_public_keys": [provisioner_key.public]}
        real = {"PLAY_PROJECT_DIR": str(REPO / "ansible"),
                "SETUP_PLAYBOOK": "playbooks/setup_server.yml", "PLAY_TIMEOUT": "1500"}
        for _ in range(2):
            await run_and_check(runner, redis_client, db, handle, expect_port=first,
                                changed=False, PLAY_VARS=json.dumps(base_vars), **real)
            assert listening(host) == {first}
        await run_and_check(runner, redis_client, db, handle, expect_port=second, changed=True,
                            PLAY_VARS=json.dumps({**base_vars, "ssh_port": second}), **real)
        assert listening(host) == {second}
        await run_and_check(runner, redis_client, db, handle, expect_port=second,
                            changed=False, PLAY_VARS=json.dumps(base_vars), **real)
        assert orchestrator_key.body in host.exec("cat /root/.ssh/authorized_keys").stdout
