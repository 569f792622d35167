"""Dead-lettering a claimed payload, with a ``rejected`` result when the Scheduler can be
told (a handle or request id could be read)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.messages import MAX_PAYLOAD_BYTES, InvalidMessage, ProvisionerMessage, RejectReason
from contracts.results import ErrorKind, Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.observability.metrics import Metrics
from dispatcher.store.queue import QueueStore
from dispatcher.store.retry import RedisRetry

log = logging.getLogger("dispatcher")


@dataclass(frozen=True)
class DeadLetter:
    """What dead-lettering one payload writes: the entry, and the result (JSON) if any."""

    entry: dict[str, Any]
    result: str | None
    server_handle: str | None
    request_id: str | None


def rejection_result(invalid: InvalidMessage, message: ProvisionerMessage | None,
                     handle: str | None, request_id: str | None,
                     now: datetime | None = None) -> ResultEntry:
    """The result for a dead-lettered message whose handle or request id could be read."""
    return ResultEntry(
        request_id=request_id, server_handle=handle,
        action=message.action if message else None, mode=message.mode if message else None,
        status=ResultStatus.REJECTED, reported_by=Reporter.DISPATCHER,
        finished_at=now or datetime.now(UTC),
        error=ResultError(kind=ErrorKind.INVALID_MESSAGE, message=str(invalid)),
    )


def dead_letter_of(raw: bytes, invalid: InvalidMessage, message: ProvisionerMessage | None,
                   replica: str, now: datetime) -> DeadLetter:
    handle = message.server_handle if message else invalid.server_handle
    rid = message.request_id if message else invalid.request_id
    # Bounded: payloads here are at most MAX_PAYLOAD_BYTES (the claim script dead-letters
    # bigger ones); kept whole so `dead-letter --requeue` can retry them.
    payload = raw[:MAX_PAYLOAD_BYTES].decode("utf-8", errors="backslashreplace")
    entry: dict[str, Any] = {
        "reason": invalid.reason, "detail": invalid.detail, "payload": payload,
        "payload_bytes": len(raw), "payload_truncated": len(raw) > MAX_PAYLOAD_BYTES,
        "server_handle": handle, "request_id": rid, "replica": replica,
        "at": now.isoformat(),
    }
    result = None
    # A duplicate's request belongs to the Job in flight: that Job reports, not us.
    if (handle or rid) and invalid.reason is not RejectReason.DUPLICATE:
        result = rejection_result(invalid, message, handle, rid, now).to_json()
    return DeadLetter(entry, result, handle, rid)


class Rejecter:
    def __init__(self, store: QueueStore, retry: RedisRetry, metrics: Metrics,
                 replica: str) -> None:
        self.store = store
        self.retry = retry
        self.metrics = metrics
        self.replica = replica

    async def reject(self, raw: bytes, invalid: InvalidMessage,
                     message: ProvisionerMessage | None = None, *, holder: bool = False
                     ) -> None:
        """Dead-letter a claimed payload. ``holder``: this claim acquired the server slot
        (only then is the slot released); otherwise a request id that is in flight makes
        it a duplicate, with no result and nothing else changed."""
        dead = dead_letter_of(raw, invalid, message, self.replica, datetime.now(UTC))
        plain = await self.retry(lambda: self.store.dead_letter(
            raw, dead.entry, dead.result, dead.request_id, dead.server_handle, holder=holder))
        reason = invalid.reason if plain else RejectReason.DUPLICATE
        log.warning("message dead-lettered", extra={
            "server_handle": dead.server_handle, "request_id": dead.request_id,
            "reason": str(reason),
            "detail": invalid.detail if plain else "its request id holds a Job in flight",
            "payload_bytes": len(raw)})
