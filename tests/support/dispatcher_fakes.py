"""Helpers of the dispatcher's unit tests (pure logic, no services)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

import jsonschema
from hypothesis import settings

from contracts.messages import InvalidMessage, ProvisionerMessage
from dispatcher.executors.base import JobEnd
from dispatcher.schemas import SCHEMA_DIR

# No per-example deadline: the machine is shared, and a slow example is not a failure.
PROPERTY = settings(deadline=None)


@functools.cache
def _result_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / "provisioner-result.schema.json").read_text())
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return validator


def assert_valid_result(result_json: str) -> dict[str, Any]:
    """A result entry as the Scheduler reads it: valid against the published schema."""
    entry: dict[str, Any] = json.loads(result_json)
    _result_validator().validate(entry)
    return entry


class FakeExecutor:
    """The executor's edge for unit tests: launches and dry runs answer from scripts (an
    exception in a script is raised), every call is recorded."""

    def __init__(self, launches: list[bool | Exception] | None = None,
                 preflights: list[str | Exception | None] | None = None) -> None:
        self.launches = list(launches or [])
        self.preflights = list(preflights or [])
        self.launched: list[str] = []
        self.preflight_calls = 0
        self.on_pod_rejected: Callable[[str], None] | None = None
        self.ends: asyncio.Queue[JobEnd] = asyncio.Queue()

    async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
        self.launched.append(job_name)
        answer = self.launches.pop(0) if self.launches else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def preflight(self) -> str | None:
        self.preflight_calls += 1
        answer = self.preflights.pop(0) if self.preflights else None
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeAcks:
    """Acks recorded, never sent."""

    def __init__(self) -> None:
        self.acked: list[tuple[str, str, str]] = []

    async def ack(self, raw: str, handle: str, request_id: str) -> None:
        self.acked.append((raw, handle, request_id))


class FakeRejecter:
    """Rejections recorded, never sent."""

    def __init__(self) -> None:
        self.rejected: list[tuple[bytes, InvalidMessage, bool]] = []

    async def reject(self, raw: bytes, invalid: InvalidMessage,
                     message: ProvisionerMessage | None = None, *, holder: bool = False
                     ) -> None:
        self.rejected.append((raw, invalid, holder))
