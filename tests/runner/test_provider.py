"""The provider API client (runner_image.provider.Time4VpsClient) against the provider API
served over real HTTP on 127.0.0.1 (tests/support/provider_api.py): what it sends, which
failures it retries, and what its errors say."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runner_image.provider import POLL_ATTEMPTS, ProviderError, Time4VpsClient
from tests.support.provider_api import ProviderApi

USER, PASSWORD = "t4v-user", "t4v-password-secret"


@pytest.fixture
def api(provider: ProviderApi) -> ProviderApi:
    provider.reset(pending_polls=2)
    return provider


def client(api: ProviderApi, password: str = PASSWORD, timeout: float = 5.0) -> Time4VpsClient:
    return Time4VpsClient(api.url, SecretStr(USER), SecretStr(password), timeout)


async def test_a_reinstall_is_requested_then_polled_until_completed(api: ProviderApi) -> None:
    async with client(api) as t4v:
        task_id = await t4v.reinstall("4242", "debian-12", "ssh-ed25519 AAAA provisioner")
        task = await t4v.wait_for_task("4242", task_id, interval=0.01, limit=10, context={})
    assert task["completed"]
    posted = api.requests[0]
    assert (posted.method, posted.path, posted.authorized) == ("POST", "/api/server/4242/reinstall",
                                                               True)
    assert posted.body == {"os": "debian-12", "ssh_key": "ssh-ed25519 AAAA provisioner",
                           "script": None}
    polls = [r for r in api.requests if r.method == "GET"]
    assert [r.path for r in polls] == [f"/api/server/4242/task/{task_id}"] * 3


async def test_a_wrong_login_says_which_settings_to_check(api: ProviderApi) -> None:
    async with client(api, password="not-the-password") as t4v:
        with pytest.raises(ProviderError) as raised:
            await t4v.reinstall("4242", "debian-12", None)
    message = raised.value.message
    assert "HTTP 401: wronglogin" in message and "PROVIDER_API_PASSWORD" in message
    assert "not-the-password" not in message and not raised.value.transient


async def test_a_failed_reinstall_request_is_not_repeated(api: ProviderApi) -> None:
    api.behaviour.reinstall_status = 502
    async with client(api) as t4v:
        with pytest.raises(ProviderError) as raised:
            await t4v.reinstall("4242", "debian-12", None)
    assert raised.value.transient and "HTTP 502: Internal error" in raised.value.message
    assert len(api.requests) == 1  # a second POST could start a second reinstall


async def test_polls_are_retried_a_few_times_on_server_errors(api: ProviderApi) -> None:
    async with client(api) as t4v:
        task_id = await t4v.reinstall("4242", "debian-12", None)
        api.behaviour.poll_status = 503
        with pytest.raises(ProviderError) as raised:
            await t4v.wait_for_task("4242", task_id, interval=0.01, limit=10, context={})
    assert "HTTP 503" in raised.value.message
    assert len([r for r in api.requests if r.method == "GET"]) == POLL_ATTEMPTS


async def test_an_invalid_task_is_not_retried(api: ProviderApi) -> None:
    async with client(api) as t4v:
        task_id = await t4v.reinstall("4242", "debian-12", None)
        api.behaviour.invalid_task = True
        with pytest.raises(ProviderError) as raised:
            await t4v.wait_for_task("4242", task_id, interval=0.01, limit=10, context={})
    assert "Invalid task ID" in raised.value.message
    assert len([r for r in api.requests if r.method == "GET"]) == 1


async def test_a_task_that_never_completes_times_out(api: ProviderApi) -> None:
    api.behaviour.pending_polls = 10_000
    async with client(api) as t4v:
        task_id = await t4v.reinstall("4242", "debian-12", None)
        with pytest.raises(ProviderError) as raised:
            await t4v.wait_for_task("4242", task_id, interval=0.05, limit=0.2, context={})
    assert f"provider task {task_id} for server 4242 not completed within 0.2s" in (
        raised.value.message)


async def test_non_json_and_silent_answers_are_named(api: ProviderApi) -> None:
    api.behaviour.non_json = True
    async with client(api) as t4v:
        with pytest.raises(ProviderError) as raised:
            await t4v.reinstall("4242", "debian-12", None)
    assert "HTTP 502 with a non-JSON body: '<html><body>Bad Gateway</body></html>'" in (
        raised.value.message)
    api.reset(reinstall_delay=1.0)
    async with client(api, timeout=0.2) as t4v:
        with pytest.raises(ProviderError) as raised:
            await t4v.reinstall("4242", "debian-12", None)
    assert "no answer within the timeout (PROVIDER_REQUEST_TIMEOUT)" in raised.value.message
    assert raised.value.transient
