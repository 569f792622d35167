"""The run's own logic (runner_image.run) without a process: settings errors named all at
once, SIGTERM turned into a cancelled run, an unexpected error turned into an ``internal``
result, the time each report write gets. The whole run as a process is in
test_run_without_host.py and test_run_on_host.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from contracts.exit_codes import ExitCode
from contracts.results import ErrorKind
from runner_image import run as run_module
from runner_image.deadline import RunDeadline
from runner_image.settings import RunnerSettings
from tests.support.keys import Keypair
from tests.support.runner_fakes import (
    FakeStore,
    FakeWorkspace,
    context,
    server_record,
    unit_settings,
)

pytestmark = pytest.mark.unit


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSH_PRIVATE_KEY", "ORCHESTRATOR_SSH_PUBLIC_KEY", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSH_ATTEMPTS", "0")
    problem = run_module._load_settings()
    assert isinstance(problem, str)
    for name in ("SSH_PRIVATE_KEY is not set", "ORCHESTRATOR_SSH_PUBLIC_KEY is not set",
                 "SSH_ATTEMPTS", "DATABASE_URL is not set"):
        assert name in problem


def test_a_deploy_key_that_does_not_decode_is_named_not_quoted() -> None:
    body = "AAAAC3NzaC1lZDI1NTE5AAAAIA" + "A" * 10
    problem = run_module._deploy_key_problem(f"ssh-ed25519 {body}")
    assert problem is not None and problem.startswith("ORCHESTRATOR_SSH_PUBLIC_KEY is invalid")
    assert body not in problem


def test_each_report_write_gets_its_share_of_what_is_left() -> None:
    assert run_module._report_time(RunDeadline(None, 30.0, None), share=0.5) is None
    deadline = RunDeadline(time.monotonic() + 100.0, 30.0, 600.0)  # 70 s left + 30 reserve
    left = run_module._report_time(deadline, share=0.5)
    assert left is not None and 49.0 < left <= 50.0
    spent = RunDeadline(time.monotonic() - 100.0, 30.0, 600.0)
    assert run_module._report_time(spent, share=1.0) == 1.0  # never less than a second


async def test_sigterm_sets_the_flag_and_cancels_the_job() -> None:
    signals = run_module.Cancellation()

    async def job() -> None:
        await asyncio.sleep(30)

    with signals.handled():
        signals.task = asyncio.create_task(job())  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(asyncio.CancelledError):
            await signals.task
    assert signals.event.is_set()


@pytest.fixture
def settings(tmp_path: Path, provisioner_key: Keypair,
             orchestrator_key: Keypair) -> RunnerSettings:
    return unit_settings(tmp_path, provisioner_key, orchestrator_key)


class BrokenStore(FakeStore):
    async def lock(self, handle: str, wait: float) -> None:
        raise RuntimeError("the store broke")


async def test_an_unexpected_error_is_an_internal_result(tmp_path: Path,
                                                         settings: RunnerSettings,
                                                         provisioner_key: Keypair) -> None:
    outcome, claimed = await run_module._execute(
        context(settings), BrokenStore(server_record()),
        FakeWorkspace(tmp_path, provisioner_key.public), run_module.Cancellation())
    assert outcome.error is not None and outcome.error.kind is ErrorKind.INTERNAL
    assert outcome.error.message == "unexpected error: RuntimeError: the store broke"
    assert outcome.exit_code is ExitCode.FAILED and not claimed
