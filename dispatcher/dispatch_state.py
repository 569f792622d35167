"""What the dispatch collaborators (intake, launcher, ends, reconciler) share besides the
queue store and the Redis retry policy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class DispatchState:
    # Payloads this process is handling (claimed, being routed or launched). Anything else
    # in our processing list for two reconcile passes was orphaned (e.g. a claim whose reply
    # a reconnect lost) and is requeued.
    claimed: set[bytes] = field(default_factory=set)
    # Set whenever this replica frees a server slot: intake waiting at the in-flight cap
    # wakes at once (ends seen by other replicas are noticed by polling).
    capacity: asyncio.Event = field(default_factory=asyncio.Event)
