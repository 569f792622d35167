"""What every step of one run shares: the message, the settings, the deadline, the redactor,
the SIGTERM flag and the warm-up of what the play and the report import."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from contracts.messages import ProvisionerMessage
from runner_image.deadline import RunDeadline
from runner_image.phases import RunTrace
from runner_image.redaction import Redactor
from runner_image.settings import DatabaseSettings, RunnerSettings
from runner_image.warmup import Warmup


@dataclass
class RunContext:
    message: ProvisionerMessage
    settings: RunnerSettings
    db_settings: DatabaseSettings
    job_name: str | None
    redact: Redactor
    cancelled: threading.Event
    deadline: RunDeadline
    warmup: Warmup  # what the play and the report import, loaded during the SSH check
    trace: RunTrace = field(default_factory=RunTrace)  # phases and ports, for the history

    @property
    def request_id(self) -> str:
        assert self.message.request_id is not None
        return self.message.request_id

    @property
    def log_context(self) -> dict[str, Any]:
        return {"server_handle": self.message.server_handle, "request_id": self.request_id,
                "job_name": self.job_name}
