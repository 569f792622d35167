"""What a run checks before it touches anything (runner_image.inputs): settings, the
server's row read under its lock, the root password; each problem as the outcome it ends
the run with, over a fake store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from contracts.results import ErrorKind, ResultStatus
from runner_image import outcome as out
from runner_image.db import MissingCredentialsKey, WrongCredentialsKey
from runner_image.deadline import DeadlineReached, RunDeadline
from runner_image.inputs import check_settings, lock_and_read
from runner_image.redaction import MASK, Redactor
from runner_image.settings import RunnerSettings
from tests.support.keys import Keypair
from tests.support.runner_fakes import NO_DEADLINE, FakeStore, context, server_record, unit_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path, provisioner_key: Keypair,
             orchestrator_key: Keypair) -> RunnerSettings:
    return unit_settings(tmp_path, provisioner_key, orchestrator_key,
                         recovery_playbooks=["recover.yml"])


def reason(outcome: out.Outcome | None) -> tuple[ResultStatus, ErrorKind, str]:
    assert outcome is not None and outcome.error is not None
    return outcome.status, outcome.error.kind, outcome.error.message


def test_settings_that_fit_the_message_pass(settings: RunnerSettings) -> None:
    assert check_settings(settings, context(settings).message) is None


def test_a_missing_playbook_is_named(settings: RunnerSettings) -> None:
    status, kind, message = reason(check_settings(
        settings, context(settings, is_recovery=True).message))
    assert (status, kind) == (ResultStatus.REJECTED, ErrorKind.CONFIG_ERROR)
    assert message.startswith(f"playbook {settings.play_project_dir / 'recover.yml'} does not "
                              "exist")


def test_a_reinstall_needs_the_provider_credentials(settings: RunnerSettings) -> None:
    _, kind, message = reason(check_settings(
        settings, context(settings, force_reinstall=True).message))
    assert kind is ErrorKind.CONFIG_ERROR
    assert message == "force_reinstall needs PROVIDER_API_USERNAME and PROVIDER_API_PASSWORD"


async def test_the_row_and_password_are_read_under_the_lock(settings: RunnerSettings) -> None:
    store = FakeStore(server_record(has_password=True), password=SecretStr("root-pw-secret"))
    redact = Redactor()
    read = await lock_and_read(store, context(settings).message, 30.0, NO_DEADLINE, redact)
    assert not isinstance(read, out.Outcome)
    server, password = read
    assert server.handle == "web-1" and password is not None
    assert store.calls == [("lock", 30.0)]
    assert redact("echo root-pw-secret") == f"echo {MASK}"  # masked from now on


async def test_a_busy_server_fails_without_touching_the_row(settings: RunnerSettings) -> None:
    store = FakeStore(server_record(), busy=True)
    read = await lock_and_read(store, context(settings).message, 30.0, NO_DEADLINE, Redactor())
    assert isinstance(read, out.Outcome) and read.server_status is None
    assert reason(read)[:2] == (ResultStatus.FAILED, ErrorKind.SERVER_BUSY)


async def test_a_lock_wait_cut_by_the_deadline_is_the_deadline(settings: RunnerSettings) -> None:
    store = FakeStore(server_record(), busy=True)
    deadline = RunDeadline(time.monotonic() + 5.0, 0.0, 600.0)
    with pytest.raises(DeadlineReached) as raised:
        await lock_and_read(store, context(settings).message, 30.0, deadline, Redactor())
    assert raised.value.phase == "the wait for the server's lock"
    assert store.calls[0][1] <= 5.0  # the wait itself was capped


async def test_an_unknown_server_says_how_to_register_it(settings: RunnerSettings) -> None:
    read = await lock_and_read(FakeStore(None), context(settings).message, 30.0, NO_DEADLINE,
                               Redactor())
    _, kind, message = reason(read)
    assert kind is ErrorKind.UNKNOWN_SERVER and "register-server" in message


async def test_a_reinstall_of_a_server_without_a_provider_id_is_rejected(
        settings: RunnerSettings) -> None:
    store = FakeStore(server_record(provider_server_id=None))
    read = await lock_and_read(store, context(settings, force_reinstall=True).message, 30.0,
                               NO_DEADLINE, Redactor())
    status, kind, message = reason(read)
    assert (status, kind) == (ResultStatus.REJECTED, ErrorKind.CONFIG_ERROR)
    assert "--provider-server-id" in message


@pytest.mark.parametrize(("error", "expected"), [
    (MissingCredentialsKey("CREDENTIALS_KEY is not set"),
     (ResultStatus.REJECTED, ErrorKind.CONFIG_ERROR)),
    (WrongCredentialsKey(), (ResultStatus.REJECTED, ErrorKind.CONFIG_ERROR)),
    (ConnectionResetError("connection lost"),
     (ResultStatus.FAILED, ErrorKind.DATABASE_UNAVAILABLE)),
], ids=["no-key", "wrong-key", "connection-lost"])
async def test_a_password_that_cannot_be_read_leaves_the_row_alone(
        settings: RunnerSettings, error: Exception,
        expected: tuple[ResultStatus, ErrorKind]) -> None:
    store = FakeStore(server_record(has_password=True), password_error=error)
    read = await lock_and_read(store, context(settings).message, 30.0, NO_DEADLINE, Redactor())
    assert isinstance(read, out.Outcome) and read.server_status is None
    assert reason(read)[:2] == expected
