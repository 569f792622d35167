"""Building the runner's result entry (runner_image.report.build_entry) from an outcome."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.messages import Action, RunMode
from contracts.results import ErrorKind, PlayRecap
from runner_image import outcome as out
from runner_image.redaction import MASK, Redactor
from runner_image.report import build_entry

pytestmark = pytest.mark.unit

SECRET = "late-learnt-secret-42"


def build(outcome: out.Outcome, redact: Redactor) -> dict:
    entry = build_entry(outcome, request_id="req-1", handle="web-7", action=Action.RECOVERY,
                        mode=RunMode.RUN, job_name="web-7-recovery-1",
                        started_at=datetime(2026, 12, 2, tzinfo=UTC),
                        duration=3.14159, redact=redact)
    return entry.model_dump(mode="json")


def test_error_text_is_masked_again_with_secrets_learnt_later() -> None:
    # The error was built before the password was read; the report masks it anyway.
    outcome = out.failed(ErrorKind.PLAY_FAILED, f"task failed: {SECRET}", task=f"t {SECRET}",
                         host="web-7", output_tail=f"...{SECRET}...")
    entry = build(outcome, Redactor([SECRET]))
    error = entry["error"]
    assert SECRET not in str(entry)
    assert error["message"] == f"task failed: {MASK}" and error["task"] == f"t {MASK}"
    assert error["kind"] == "play_failed"


def test_the_entry_carries_the_run_and_the_outcome() -> None:
    outcome = out.succeeded(PlayRecap(ok=5), {"freed_bytes": 10})
    outcome.ssh_port, outcome.ssh_port_changed = 22, False
    entry = build(outcome, Redactor())
    assert entry["status"] == "succeeded" and entry["reported_by"] == "runner"
    assert entry["action"] == "recovery" and entry["job_name"] == "web-7-recovery-1"
    assert entry["duration_seconds"] == 3.142
    assert entry["recap"]["ok"] == 5 and entry["details"] == {"freed_bytes": 10}
    assert (entry["ssh_port"], entry["ssh_port_changed"]) == (22, False)
    assert entry["error"] is None
