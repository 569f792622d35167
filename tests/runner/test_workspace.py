"""The run's workspace (runner_image.workspace.Workspace): a private scratch directory and
a real ssh-agent holding the run's key, wound up whatever happened. The sweep of processes
the play left behind is faked here: in the test process it would stop the suite's own
services (it is exercised by the runs in test_run_on_host.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from runner_image import workspace as workspace_module
from runner_image.agent import KeyRejected
from runner_image.workspace import Workspace
from tests.support.keys import Keypair


class Sweeps:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> list[str]:
        self.count += 1
        return []


class ClosingClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch) -> Sweeps:
    sweeps = Sweeps()
    monkeypatch.setattr(workspace_module, "stop_leftovers", sweeps)
    return sweeps


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_private_directory_and_an_agent_with_the_key_then_nothing_left(
        tmp_path: Path, provisioner_key: Keypair, sweeps: Sweeps) -> None:
    client = ClosingClient()
    async with Workspace.opened(tmp_path, SecretStr(provisioner_key.private)) as workspace:
        assert workspace.problem is None and workspace.scratch is not None
        scratch = workspace.scratch
        assert scratch.parent == tmp_path and scratch.stat().st_mode & 0o777 == 0o700
        agent = await workspace.agent()
        assert agent.public_key.split()[:2] == provisioner_key.public.split()[:2]
        assert agent.socket.is_socket()
        workspace.clients.append(client)  # type: ignore[arg-type]
        pid = agent.process.pid
    assert not scratch.exists()
    assert not running(pid)
    assert client.closed and sweeps.count == 1


async def test_the_wind_up_runs_once_however_often_it_is_asked_for(
        tmp_path: Path, provisioner_key: Keypair, sweeps: Sweeps) -> None:
    workspace = Workspace(tmp_path, SecretStr(provisioner_key.private))
    await workspace.agent()
    workspace.wind_up_soon()
    workspace.wind_up_soon()
    await workspace.wind_up()
    assert sweeps.count == 1 and os.listdir(tmp_path) == []


async def test_an_unusable_scratch_root_is_a_problem_not_a_crash(
        tmp_path: Path, provisioner_key: Keypair, sweeps: Sweeps) -> None:
    async with Workspace.opened(tmp_path / "missing",
                                SecretStr(provisioner_key.private)) as workspace:
        assert workspace.scratch is None
        assert workspace.problem is not None
        assert workspace.problem.startswith("RUNNER_SCRATCH_DIR is not a writable directory: ")
    assert sweeps.count == 0  # no run happened: nothing to sweep


async def test_a_key_the_agent_refuses_is_reported_and_still_wound_up(
        tmp_path: Path, provisioner_key: Keypair, sweeps: Sweeps) -> None:
    armor = provisioner_key.private.strip().splitlines()
    bad = SecretStr(f"{armor[0]}\nnot a key\n{armor[-1]}\n")  # a key's armor, no key
    async with Workspace.opened(tmp_path, bad) as workspace:
        with pytest.raises(KeyRejected):
            await workspace.agent()
    assert os.listdir(tmp_path) == []
