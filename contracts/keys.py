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

    def reported(self, request_id: str) -> str:
        """Exists once a result was published for the request (exactly-one-result guard)."""
        return f"{self.prefix}:reported:{request_id}"
