"""What a run notes about itself for its history row while it runs: how long each phase
took, and the SSH port the server's row had before the run (runner_image/history.py writes
both at the end)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from contracts.run_history import Phase


@dataclass
class RunTrace:
    seconds: dict[Phase, float] = field(default_factory=dict)
    ssh_port_before: int | None = None

    @contextlib.contextmanager
    def timing(self, phase: Phase) -> Iterator[None]:
        """Add the time the block takes to ``phase`` (also when it raises: a phase cut short
        by the deadline or SIGTERM still took that long). A phase entered twice adds up."""
        began = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - began
            self.seconds[phase] = self.seconds.get(phase, 0.0) + spent

    def phases(self) -> dict[str, float]:
        """Phase -> seconds, in the order of the vocabulary, as the row stores them."""
        return {p.value: round(self.seconds[p], 3) for p in Phase if p in self.seconds}
