"""The reinstall step (runner_image.reinstall.reinstall) against the provider API served
over real HTTP on 127.0.0.1: the task id handed over as soon as the reinstall started,
nothing more when it completes, a masked ``provider_error`` outcome when it does not."""

from __future__ import annotations

from pydantic import SecretStr

from contracts.results import ErrorKind, ResultStatus
from runner_image import outcome as out
from runner_image.db import ServerStatus
from runner_image.redaction import MASK, Redactor
from runner_image.reinstall import ProviderAccess, reinstall
from tests.support.provider_api import ProviderApi
from tests.support.runner_fakes import NO_DEADLINE

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB infra-service-provisioner"


def access(api: ProviderApi, password: str | None = None) -> ProviderAccess:
    b = api.behaviour
    return ProviderAccess(api.url, SecretStr(b.username), SecretStr(password or b.password),
                          request_timeout=5.0, poll_interval=0.01, task_timeout=10.0,
                          os_code="debian-12")


async def test_the_task_id_once_the_reinstall_completed(provider: ProviderApi) -> None:
    provider.reset(pending_polls=1)
    redact, tasks = Redactor(), []
    result = await reinstall(access(provider), "4242", KEY, deadline=NO_DEADLINE, redact=redact,
                             requested=tasks.append)
    assert result is None and tasks == ["1000"]
    assert provider.requests[0].body == {"os": "debian-12", "ssh_key": KEY, "script": None}
    # The credentials are masked from here on, wherever they might be echoed.
    assert redact(f"user {provider.behaviour.username}") == f"user {MASK}"


async def test_a_provider_failure_after_the_start_is_a_provider_error(
        provider: ProviderApi) -> None:
    provider.reset(invalid_task=True)
    tasks: list[str] = []
    result = await reinstall(access(provider), "4242", KEY, deadline=NO_DEADLINE,
                             redact=Redactor(), requested=tasks.append)
    assert isinstance(result, out.Outcome) and result.error is not None
    assert (result.status, result.error.kind) == (ResultStatus.FAILED, ErrorKind.PROVIDER_ERROR)
    assert result.server_status is ServerStatus.FAILED
    assert "Invalid task ID" in result.error.message
    assert tasks == ["1000"]


async def test_a_refused_login_names_no_secret(provider: ProviderApi) -> None:
    provider.reset()
    tasks: list[str] = []
    result = await reinstall(access(provider, password="typo-secret"), "4242", KEY,
                             deadline=NO_DEADLINE, redact=Redactor(), requested=tasks.append)
    assert isinstance(result, out.Outcome) and result.error is not None
    assert "wronglogin" in result.error.message and "typo-secret" not in result.error.message
    assert tasks == []  # no task was started
