"""Names of every Redis key infra-service uses, derived from one prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "provisioner"

    @property
    def queue(self) -> str:
        """Producers LPUSH here; the dispatcher takes from the right end (FIFO)."""
        return f"{self.prefix}:queue"

    @property
    def results(self) -> str:
        """One entry per request, LPUSHed (newest first)."""
        return f"{self.prefix}:results"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead-letter"

    @property
    def replicas(self) -> str:
        """Set of dispatcher replica ids that may own a processing list."""
        return f"{self.prefix}:replicas"

    @property
    def inflight(self) -> str:
        """Hash server_handle -> slot (the Job that holds the server, or a reservation)."""
        return f"{self.prefix}:inflight"

    def processing(self, replica: str) -> str:
        return f"{self.prefix}:processing:{replica}"

    def heartbeat(self, replica: str) -> str:
        return f"{self.prefix}:replica:{replica}"

    def waiting(self, handle: str) -> str:
        """Messages for a busy server, oldest first (RPUSH, LPOP)."""
        return f"{self.prefix}:waiting:{handle}"

    @property
    def waiting_index(self) -> str:
        """Set of handles that have a waiting list."""
        return f"{self.prefix}:waiting-handles"

    def capped(self, action: str) -> str:
        """Messages over their action's cap (``DISPATCHER_ACTION_CAPS``), in the order they
        met it, oldest at the right end (LPUSH, RPOP): not claimed, holding no slot."""
        return f"{self.prefix}:capped:{action}"

    @property
    def capped_servers(self) -> str:
        """Hash server_handle -> action: the server's next message waits on that action's
        capped list, so its later messages park behind it (per-server order)."""
        return f"{self.prefix}:capped-servers"

    @property
    def limits(self) -> str:
        """Hash ``in_flight`` -> the global cap, ``<action>`` -> that action's cap: what the
        dispatchers were configured with, written at start-up so every script that frees a
        slot can let a capped message go."""
        return f"{self.prefix}:limits"

    def reported(self, request_id: str) -> str:
        """Exists once a result was published for the request (exactly-one-result guard)."""
        return f"{self.prefix}:reported:{request_id}"

    @property
    def result_counts(self) -> str:
        """Hash ``<status>|<kind>`` -> results published (``none`` kind for a success),
        incremented in the script that pushes each result: exact across replicas and
        restarts, whatever consumers pop from the results list."""
        return f"{self.prefix}:counts:results"

    @property
    def dead_letter_counts(self) -> str:
        """Hash reason -> messages dead-lettered, incremented in the script that pushes the
        entry."""
        return f"{self.prefix}:counts:dead-letters"

    @property
    def server_outcomes(self) -> str:
        """Hash server_handle -> JSON {status, kind, at} of the server's latest result that
        did not succeed (removed by its next success; old entries pruned by the exporter)."""
        return f"{self.prefix}:server-outcomes"

    def first_seen(self, payload_sha1: str) -> str:
        """When a queued payload (by its SHA-1) was first seen at the consuming end of the
        queue (unix seconds): its queued time when the message has no ``enqueued_at``."""
        return f"{self.prefix}:first-seen:{payload_sha1}"

    @property
    def metrics_lease(self) -> str:
        """The replica that exports the Redis-derived series (a short lease)."""
        return f"{self.prefix}:metrics-exporter"
