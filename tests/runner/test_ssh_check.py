"""The SSH check and the wait for SSH after a reinstall (runner_image.ssh_check): their
retry policies and the outcome each ending gives, over an SSH client with scripted
answers."""

from __future__ import annotations

import time

import pytest

from contracts.results import ErrorKind, ResultStatus
from runner_image import outcome as out
from runner_image.deadline import DeadlineReached, RunDeadline
from runner_image.ssh import SshError, SshErrorKind, SshResult
from runner_image.ssh_check import CheckPolicy, ComebackPolicy, check_ssh, wait_for_ssh
from tests.support.runner_fakes import NO_DEADLINE, FakeSshClient, ok

pytestmark = pytest.mark.unit

DOWN = SshError(SshErrorKind.UNREACHABLE, "ssh to root@192.0.2.10:22: Connection refused")
REFUSED = SshError(SshErrorKind.AUTH, "SSH login to root@192.0.2.10:22 was refused")
CHANGED = SshError(SshErrorKind.HOST_KEY, "the SSH host key of root@192.0.2.10:22 differs")
QUICK = CheckPolicy(attempts=3, backoff_base=0.01, command_timeout=5.0)


def deadline_in(seconds: float) -> RunDeadline:
    return RunDeadline(time.monotonic() + seconds, 0.0, 600.0)


async def test_a_server_that_answers_on_the_third_try_passes() -> None:
    client = FakeSshClient(DOWN, DOWN, ok(auth_method="password"))
    result = await check_ssh(client, None, accept_new=True, policy=QUICK,
                             deadline=NO_DEADLINE)
    assert isinstance(result, SshResult) and result.auth_method == "password"
    assert [c["remote"] for c in client.calls] == ["true"] * 3
    assert all(c["accept_new"] and c["limit"] == 5.0 for c in client.calls)


async def test_no_answer_after_every_attempt_is_unreachable() -> None:
    client = FakeSshClient(DOWN)
    result = await check_ssh(client, None, accept_new=False, policy=QUICK,
                             deadline=NO_DEADLINE)
    assert isinstance(result, out.Outcome)
    assert result.status is ResultStatus.UNREACHABLE and result.error is not None
    assert result.error.kind is ErrorKind.SSH_UNREACHABLE
    assert result.error.message.endswith("Connection refused (after 3 attempts)")
    assert len(client.calls) == 3


@pytest.mark.parametrize(("error", "status", "kind"), [
    (REFUSED, ResultStatus.UNREACHABLE, ErrorKind.SSH_AUTH_FAILED),
    (CHANGED, ResultStatus.FAILED, ErrorKind.HOST_KEY_MISMATCH),
], ids=["refused-login", "changed-host-key"])
async def test_a_refused_login_or_a_changed_key_is_not_retried(
        error: SshError, status: ResultStatus, kind: ErrorKind) -> None:
    client = FakeSshClient(error, ok())
    result = await check_ssh(client, None, accept_new=False, policy=QUICK,
                             deadline=NO_DEADLINE)
    assert isinstance(result, out.Outcome) and result.error is not None
    assert (result.status, result.error.kind, result.error.message) == (status, kind,
                                                                        error.message)
    assert len(client.calls) == 1  # a second login could trip a lockout


async def test_no_pause_runs_past_the_deadline() -> None:
    client = FakeSshClient(DOWN)
    slow = CheckPolicy(attempts=5, backoff_base=30.0, command_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(DeadlineReached) as raised:
        await check_ssh(client, None, accept_new=False, policy=slow,
                        deadline=deadline_in(10.0))
    assert time.monotonic() - started < 5  # it did not sleep the 30 s pause
    assert "last SSH error" in raised.value.message and "Connection refused" in raised.value.message
    assert len(client.calls) == 1
    assert client.calls[0]["limit"] <= 5.0


async def test_after_a_reinstall_any_host_key_is_accepted_until_ssh_is_back() -> None:
    client = FakeSshClient(DOWN, REFUSED, ok())
    policy = ComebackPolicy(limit=10.0, interval=0.2, command_timeout=5.0)
    result = await wait_for_ssh(client, None, policy=policy,
                                deadline=NO_DEADLINE)
    assert isinstance(result, SshResult)
    assert len(client.calls) == 3  # every SSH error means "not up yet", a refusal too
    assert all(c["accept_new"] for c in client.calls)
    assert client.trusted == [None, None, None]  # the new system's key is not known yet


async def test_ssh_not_back_within_the_timeout_is_unreachable() -> None:
    client = FakeSshClient(DOWN)
    policy = ComebackPolicy(limit=0.5, interval=0.2, command_timeout=5.0)
    result = await wait_for_ssh(client, None, policy=policy,
                                deadline=NO_DEADLINE)
    assert isinstance(result, out.Outcome) and result.error is not None
    assert result.error.kind is ErrorKind.SSH_UNREACHABLE
    assert "REINSTALL_SSH_TIMEOUT=0.5s" in result.error.message
    assert 2 <= len(client.calls) <= 3


async def test_the_deadline_bounds_the_wait_after_a_reinstall() -> None:
    client = FakeSshClient(DOWN)
    policy = ComebackPolicy(limit=600.0, interval=0.2, command_timeout=5.0)
    with pytest.raises(DeadlineReached) as raised:
        await wait_for_ssh(client, None, policy=policy,
                           deadline=deadline_in(0.5))
    assert raised.value.phase == "the wait for SSH after the reinstall"
