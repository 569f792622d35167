"""Job end -> the result the dispatcher reports: pure, no services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.results import Reporter, ResultStatus
from dispatcher.executors.base import JobEnd
from dispatcher.failures import ERROR_KINDS, failure_result
from tests.support.dispatcher_fakes import PROPERTY, assert_valid_result

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _end(reason: str, succeeded: bool = False, **fields: Any) -> JobEnd:
    return JobEnd("prov-srv-1-abc", "srv-1", "r-1", succeeded, reason, "the pod's message",
                  **fields)


@pytest.mark.parametrize(("reason", "kind"), sorted(ERROR_KINDS.items()))
def test_kubernetes_reasons_map_to_kinds_the_scheduler_acts_on(reason: str, kind: str) -> None:
    entry = failure_result(_end(reason), NOW)
    assert entry.error is not None
    assert (entry.error.kind, entry.error.message) == (kind, f"{reason}: the pod's message")
    assert entry.status is (ResultStatus.TIMED_OUT if reason == "DeadlineExceeded"
                            else ResultStatus.FAILED)
    assert entry.reported_by is Reporter.DISPATCHER
    assert_valid_result(entry.to_json())


def test_an_exit_code_is_a_job_failure() -> None:
    entry = failure_result(_end("Error", action="setup"), NOW)
    assert entry.error is not None and entry.error.kind == "job_failed"
    assert entry.action is not None and entry.action.value == "setup"


def test_a_runner_that_succeeded_without_reporting_is_a_failure() -> None:
    entry = failure_result(_end("Completed", succeeded=True), NOW)
    assert entry.status is ResultStatus.FAILED
    assert entry.error is not None
    assert entry.error.message == ("Completed: the runner exited successfully without "
                                   "publishing a result")


def test_duration_counts_from_the_jobs_start() -> None:
    entry = failure_result(_end("OOMKilled", started_at=NOW - timedelta(seconds=90)), NOW)
    assert (entry.duration_seconds, entry.finished_at) == (90.0, NOW)
    assert failure_result(_end("OOMKilled"), NOW).duration_seconds is None


@PROPERTY
@given(st.text(max_size=40), st.booleans(), st.one_of(st.none(), st.text(max_size=12)),
       st.text(max_size=300))
def test_any_end_gives_one_valid_result(reason: str, succeeded: bool, action: str | None,
                                        message: str) -> None:
    end = JobEnd("prov-srv-1-abc", "srv-1", "r-1", succeeded, reason, message, action=action)
    entry = failure_result(end, NOW)
    assert entry.status in (ResultStatus.FAILED, ResultStatus.TIMED_OUT)
    assert entry.action is None or entry.action.value == action  # unknown actions dropped
    assert (entry.request_id, entry.server_handle, entry.job_name) == (
        "r-1", "srv-1", "prov-srv-1-abc")
    assert_valid_result(entry.to_json())
