"""Time4VPS API client: start an OS reinstall and wait for its task to finish.

Errors carry the provider's own message (the ``error`` list of its JSON body), the HTTP
status and the endpoint, never the credentials. Reads (task polls) are retried on
transient failures; the reinstall request itself is not, since repeating it could start a
second reinstall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from pydantic import SecretStr

from runner_image.deadline import DeadlineReached, RunDeadline

log = logging.getLogger(__name__)

POLL_ATTEMPTS = 3


class ProviderError(Exception):
    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class Time4VpsClient:
    def __init__(self, base_url: str, username: SecretStr, password: SecretStr,
                 timeout: float, deadline: RunDeadline | None = None) -> None:
        self._timeout = timeout
        self._deadline = deadline or RunDeadline(None, 0.0, None)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            auth=httpx.BasicAuth(username.get_secret_value(), password.get_secret_value()),
            timeout=timeout,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    async def __aenter__(self) -> Time4VpsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        what = f"{method} {path}"
        phase = f"the provider call {what}"
        self._deadline.require(phase)
        by_deadline = self._deadline.capped(self._timeout)
        try:
            response = await self._client.request(method, path, json=body,
                                                  timeout=self._deadline.cap(self._timeout))
        except httpx.TimeoutException:
            if by_deadline:
                raise DeadlineReached(phase, self._deadline.exhausted(phase)) from None
            raise ProviderError(f"provider API {what}: no answer within the timeout "
                                "(PROVIDER_REQUEST_TIMEOUT)", transient=True) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider API {what}: {type(exc).__name__}: {exc}",
                                transient=True) from None
        try:
            data = response.json()
        except ValueError:
            snippet = response.text[:200].strip().replace("\n", " ")
            raise ProviderError(
                f"provider API {what}: HTTP {response.status_code} with a non-JSON body: "
                f"{snippet!r}", transient=response.status_code >= 500,
            ) from None
        if isinstance(data, dict) and data.get("error"):
            errors = data["error"]
            text = ", ".join(map(str, errors)) if isinstance(errors, list) else str(errors)
            hint = (" (check PROVIDER_API_USERNAME / PROVIDER_API_PASSWORD)"
                    if "wronglogin" in text else "")
            raise ProviderError(
                f"provider API {what}: HTTP {response.status_code}: {text}{hint}",
                transient=response.status_code >= 500,
            )
        if response.status_code >= 400:
            raise ProviderError(f"provider API {what}: HTTP {response.status_code}",
                                transient=response.status_code >= 500)
        if not isinstance(data, dict):
            raise ProviderError(f"provider API {what}: expected a JSON object, got "
                                f"{type(data).__name__}")
        return data

    async def reinstall(self, server_id: str, os_code: str, ssh_key: str | None) -> str:
        data = await self._call("POST", f"server/{server_id}/reinstall",
                                {"os": os_code, "ssh_key": ssh_key, "script": None})
        task_id = data.get("task_id")
        if task_id in (None, ""):
            raise ProviderError(f"provider API POST server/{server_id}/reinstall: "
                                "the answer has no task_id")
        return str(task_id)

    async def task(self, server_id: str, task_id: str) -> dict[str, Any]:
        return await self._call("GET", f"server/{server_id}/task/{task_id}")

    async def wait_for_task(self, server_id: str, task_id: str, *, interval: float,
                            limit: float, context: dict[str, Any]) -> dict[str, Any]:
        """Poll until the task has a completion time; transient errors are retried."""
        by_deadline = self._deadline.capped(limit)
        deadline = time.monotonic() + self._deadline.cap(limit)
        failures = 0
        while True:
            try:
                task = await self.task(server_id, task_id)
                failures = 0
            except ProviderError as exc:
                failures += 1
                if not exc.transient or failures >= POLL_ATTEMPTS:
                    raise
                log.warning("provider poll failed, retrying",
                            extra={**context, "error": exc.message, "attempt": failures})
                task = {}
            if task.get("completed"):
                log.info("provider task completed", extra={**context, "task_id": task_id})
                return task
            if task:
                log.info("provider task pending", extra={**context, "task_id": task_id})
            if time.monotonic() + interval > deadline:
                if by_deadline:
                    phase = f"the wait for provider task {task_id}"
                    raise DeadlineReached(phase, self._deadline.exhausted(phase))
                raise ProviderError(
                    f"provider task {task_id} for server {server_id} not completed within "
                    f"{limit:g}s (PROVIDER_TASK_TIMEOUT)"
                )
            await asyncio.sleep(interval)
