"""What dead-lettering writes (entry and result): pure, no services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.messages import (
    MAX_PAYLOAD_BYTES,
    InvalidMessage,
    ProvisionerMessage,
    RejectReason,
    parse_message,
)
from contracts.results import ResultStatus
from dispatcher.rejects import dead_letter_of
from tests.support.dispatcher_fakes import PROPERTY, assert_valid_result

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def test_a_job_the_api_refuses_is_reported_rejected() -> None:
    message = ProvisionerMessage(server_handle="srv-1", request_id="r-1").with_identity()
    invalid = InvalidMessage(RejectReason.JOB_REJECTED, "HTTP 422 Invalid", "srv-1")
    dead = dead_letter_of(message.to_json().encode(), invalid, message, "r1", NOW)
    assert dead.entry["reason"] == RejectReason.JOB_REJECTED
    assert (dead.server_handle, dead.request_id) == ("srv-1", "r-1")
    assert dead.result is not None
    result = assert_valid_result(dead.result)
    assert result["status"] == ResultStatus.REJECTED
    assert result["action"] == "setup"
    assert result["error"]["kind"] == "invalid_message"
    assert "HTTP 422" in result["error"]["message"]


def test_a_plan_with_a_reinstall_is_dead_lettered_with_a_rejected_result() -> None:
    raw = b'{"server_handle": "srv-1", "plan": true, "force_reinstall": true, "request_id": "r-1"}'
    with pytest.raises(InvalidMessage) as caught:
        parse_message(raw)
    dead = dead_letter_of(raw, caught.value, None, "r1", NOW)
    assert dead.entry["reason"] == RejectReason.CONFLICTING_FLAGS
    assert "plan and force_reinstall" in dead.entry["detail"]
    assert (dead.server_handle, dead.request_id) == ("srv-1", "r-1")
    assert dead.result is not None
    result = assert_valid_result(dead.result)
    assert (result["status"], result["error"]["kind"]) == (ResultStatus.REJECTED,
                                                           "invalid_message")
    assert "plan and force_reinstall" in result["error"]["message"]


def test_a_duplicate_reports_nothing() -> None:
    """Its request belongs to the Job in flight: that Job's result is the only one."""
    message = ProvisionerMessage(server_handle="srv-1", request_id="r-1").with_identity()
    invalid = InvalidMessage(RejectReason.DUPLICATE, "in flight", "srv-1")
    assert dead_letter_of(b"{}", invalid, message, "r1", NOW).result is None


def test_an_unreadable_payload_is_kept_without_a_result() -> None:
    invalid = InvalidMessage(RejectReason.NOT_JSON, "payload is not JSON")
    dead = dead_letter_of(b"\xff\xfe not json", invalid, None, "r1", NOW)
    assert dead.result is None
    assert dead.entry["payload"] == "\\xff\\xfe not json"  # readable, and valid JSON text
    assert (dead.entry["payload_bytes"], dead.entry["payload_truncated"]) == (11, False)


@pytest.mark.parametrize("extra", [0, 1, 1000])
def test_the_payload_kept_is_bounded(extra: int) -> None:
    raw = b"a" * (MAX_PAYLOAD_BYTES + extra)
    invalid = InvalidMessage(RejectReason.OVERSIZE, "too big")
    dead = dead_letter_of(raw, invalid, None, "r1", NOW)
    assert len(dead.entry["payload"]) == MAX_PAYLOAD_BYTES
    assert dead.entry["payload_truncated"] is (extra > 0)


@PROPERTY
@given(st.sampled_from(sorted(set(RejectReason) - {RejectReason.DUPLICATE})),
       st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True),
       st.one_of(st.none(), st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
                                          fullmatch=True)),
       st.text(max_size=200))
def test_every_rejection_with_a_handle_has_a_valid_result(
        reason: RejectReason, handle: str, rid: str | None, detail: str) -> None:
    invalid = InvalidMessage(reason, detail, handle)
    invalid.request_id = rid
    dead = dead_letter_of(b"{}", invalid, None, "r1", NOW)
    assert dead.result is not None
    result = assert_valid_result(dead.result)
    assert (result["server_handle"], result.get("request_id")) == (handle, rid)
    assert result["status"] == ResultStatus.REJECTED
