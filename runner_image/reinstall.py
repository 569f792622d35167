"""The OS reinstall at the provider: request it with the provisioner's key, wait for its task.

The reinstall request itself is never retried (it could start a second reinstall); the
task polls are (runner_image/provider.py). Whatever the provider answers ends as a
``provider_error`` outcome carrying its message, masked: the credentials are added to the
run's redactor before the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.deadline import RunDeadline
from runner_image.redaction import Redactor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderAccess:
    """Where and how the provider's API is reached (PROVIDER_* settings)."""

    url: str
    username: SecretStr
    password: SecretStr
    request_timeout: float
    poll_interval: float
    task_timeout: float
    os_code: str


async def reinstall(access: ProviderAccess, server_id: str, ssh_key: str, *,
                    deadline: RunDeadline, redact: Redactor,
                    requested: Callable[[str], None]) -> out.Outcome | None:
    """None once the reinstall has completed, else the outcome of the failure.
    ``requested`` gets the provider's task id as soon as the reinstall has started, so the
    result carries it however the wait ends (a failure, the run's deadline)."""
    # Imported when a reinstall is asked for: httpx is a noticeable part of the runner's
    # start-up and only this step uses it.
    from runner_image.provider import ProviderError, Time4VpsClient

    redact.add(access.username.get_secret_value(), access.password.get_secret_value())
    try:
        async with Time4VpsClient(access.url, access.username, access.password,
                                  access.request_timeout, deadline=deadline) as api:
            task_id = await api.reinstall(server_id, access.os_code, ssh_key)
            requested(task_id)
            log.info("reinstall requested", extra={"task_id": task_id, "os": access.os_code})
            await api.wait_for_task(server_id, task_id, interval=access.poll_interval,
                                    limit=access.task_timeout, context={})
    except ProviderError as exc:
        log.error("provider error", extra={"error": exc.message})
        return out.failed(ErrorKind.PROVIDER_ERROR, redact(exc.message))
    return None
