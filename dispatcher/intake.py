"""Intake: claim messages from the queue in batches, parse them, and route each one:
launch it (its server's slot is ours), park it behind its server's running Job, drop a
redelivery whose request already has a result, or dead-letter it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from contracts.messages import (
    MAX_PAYLOAD_BYTES,
    Action,
    InvalidMessage,
    ProvisionerMessage,
    RejectReason,
    parse_message,
)
from dispatcher.dispatch_state import DispatchState
from dispatcher.launcher import Launcher
from dispatcher.naming import job_name_for
from dispatcher.observability.metrics import Metrics
from dispatcher.preflight import JobConfigCheck
from dispatcher.rejects import Rejecter
from dispatcher.store.queue import Acquisition, Claim, QueueStore
from dispatcher.store.retry import RedisRetry

log = logging.getLogger("dispatcher")
# Dead-letter entries of oversize payloads keep this much of it (plus its size).
DEAD_LETTER_PREFIX_BYTES = 512
CAPACITY_POLL_SECONDS = 0.5  # at the cap: how often ends of other replicas are looked for


@dataclass(frozen=True)
class Triage:
    """Claimed payloads sorted, in claim order: valid ones ready to route, invalid ones."""

    valid: list[tuple[ProvisionerMessage, Acquisition]]
    invalid: list[tuple[bytes, InvalidMessage]]


def triage(raws: list[bytes]) -> Triage:
    """Parse claimed payloads; never raises, whatever a payload holds."""
    valid: list[tuple[ProvisionerMessage, Acquisition]] = []
    invalid: list[tuple[bytes, InvalidMessage]] = []
    for raw in raws:
        try:
            message = parse_message(raw).with_identity()
        except InvalidMessage as refused:
            invalid.append((raw, refused))
            continue
        except Exception as exc:  # parse_message promises not to; a payload still must
            # never stop the loop (a restart would meet the same payload again)
            invalid.append((raw, InvalidMessage(RejectReason.UNPARSEABLE,
                                                f"{type(exc).__name__} while parsing")))
            continue
        valid.append((message, Acquisition(raw, message.to_json(), message.server_handle,
                                           message.request_id or "", job_name_for(message),
                                           message.action)))
    return Triage(valid, invalid)


# A message routed in its claim's round trip, with its route.
Routed = tuple[ProvisionerMessage, Acquisition, Claim]


class Intake:
    def __init__(self, store: QueueStore, retry: RedisRetry, blocking: aioredis.Redis,
                 launcher: Launcher, rejecter: Rejecter, config: JobConfigCheck,
                 state: DispatchState, metrics: Metrics, *, max_in_flight: int,
                 block_seconds: float, action_caps: Mapping[Action, int] | None = None) -> None:
        self.store = store
        self.retry = retry
        self.blocking = blocking
        self.launcher = launcher
        self.rejecter = rejecter
        self.config = config
        self.state = state
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        metrics.max_in_flight.set(max_in_flight)
        for action, cap in (action_caps or {}).items():
            metrics.action_cap.labels(action.value).set(cap)
        self.block_seconds = block_seconds

    async def loop(self, stop: asyncio.Event) -> None:
        drained = False  # the last claim took fewer than asked: the queue was empty
        while not stop.is_set():
            await self.config.accepted.wait()
            await self.launcher.room_free.wait()
            head: list[tuple[ProvisionerMessage, Acquisition]] = []
            if drained:
                # An empty queue is waited on with a blocking command (no polling) that
                # claims nothing itself and returns at once if a message came meanwhile;
                # a claim now would only find the queue empty again.
                first = await self.retry(lambda: self.store.wait_for_message(
                    self.blocking, self.block_seconds))
                # The wait returns the message the claim takes first (unless another
                # replica is quicker): parsed now, it is routed in the claim's own round
                # trip, so an idle message costs one round trip after the wake, not two.
                head = triage([first]).valid if first is not None else []
            # A burst is claimed in batches. At the in-flight cap nothing is claimed: wait
            # for capacity (claiming and putting back would reorder a server's messages
            # against other replicas).
            count = self.launcher.room
            routed: Routed | None = None
            if head:
                [(message, item)] = head
                batch, route = await self.retry(functools.partial(
                    self.store.claim_routing_first, count, self.max_in_flight,
                    MAX_PAYLOAD_BYTES, DEAD_LETTER_PREFIX_BYTES, item))
                routed = (message, item, route) if route is not None else None
            else:
                batch = await self.retry(functools.partial(
                    self.store.claim_many, count, self.max_in_flight, MAX_PAYLOAD_BYTES,
                    DEAD_LETTER_PREFIX_BYTES))
            drained = False
            if batch.oversize:
                self.metrics.received.inc(batch.oversize)
                log.warning("oversize payloads dead-lettered inside Redis",
                            extra={"count": batch.oversize, "limit_bytes": MAX_PAYLOAD_BYTES})
            if batch.capped:
                log.info("messages wait for their action's cap, unclaimed",
                         extra={"count": batch.capped})
            if batch.at_cap:
                await self._wait_for_capacity()
                continue
            raws = batch.payloads
            drained = len(raws) < count and not batch.oversize and not batch.capped
            if not raws:
                continue
            # One line per claim batch: what each replica was handed, summable across
            # replicas from their logs even after one was killed (claims per message).
            log.debug("claimed", extra={"count": len(raws)})
            self.state.claimed.update(raws)
            owned: set[bytes] = set()
            try:
                owned = await self._route(raws, routed)
            finally:
                # Launches hold their (possibly rewritten) payloads in ``claimed``.
                self.state.claimed.difference_update(set(raws) - owned)
            if owned:
                # The launches just started send their creates before intake spends the
                # loop's time on its next Redis call: an idle message's Job is created
                # sooner.
                await asyncio.sleep(0)

    async def _route(self, raws: list[bytes], routed: Routed | None = None) -> set[bytes]:
        """Route claimed messages in claim order; returns the payloads launches now own.
        ``routed``: the first of them, already routed in the claim's round trip."""
        self.metrics.received.inc(len(raws))
        sorted_out = triage(raws[1:] if routed is not None else raws)
        for raw, invalid in sorted_out.invalid:
            await self.rejecter.reject(raw, invalid)
        owned: set[bytes] = set()
        routes: list[Routed] = [routed] if routed is not None else []
        if sorted_out.valid:
            claims = await self.retry(lambda: self.store.acquire_many(
                [a for _, a in sorted_out.valid], self.max_in_flight))
            routes += [(message, item, claim) for (message, item), claim
                       in zip(sorted_out.valid, claims, strict=True)]
        full = False
        for message, item, claim in routes:
            ctx = {"server_handle": item.handle, "request_id": item.request_id,
                   "job_name": item.job_name}
            if claim is Claim.ACQUIRED:
                owned.add(self.launcher.launch(message, item))
            elif claim is Claim.WAITING:
                self.metrics.parked.inc()
                log.info("server busy: message waits for its Job to end", extra=ctx)
            elif claim is Claim.DONE:
                log.info("request already has a result: dropped redelivery", extra=ctx)
            elif claim is Claim.CAPPED:
                log.info("action at its cap: message waits for a run of its action to end",
                         extra={**ctx, "action": str(message.action)})
            elif claim is Claim.DUPLICATE:
                await self.rejecter.reject(item.raw, InvalidMessage(
                    RejectReason.DUPLICATE, "its request id holds a Job in flight",
                    item.handle), message)
            else:  # Claim.FULL
                full = True
                log.warning("in-flight cap reached after the claim: message put back at the "
                            "front of the queue", extra=ctx)
        if full:
            await self._wait_for_capacity()
        return owned

    async def _wait_for_capacity(self) -> None:
        """At the in-flight cap: wait for a Job to end (any replica) before claiming."""
        capacity = self.state.capacity
        while await self.retry(self.store.slot_count) >= self.max_in_flight:
            capacity.clear()
            with contextlib.suppress(TimeoutError):
                # Ends seen by this replica wake us at once; the timeout covers the others.
                await asyncio.wait_for(capacity.wait(), CAPACITY_POLL_SECONDS)
