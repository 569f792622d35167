"""Intake's triage of claimed payloads: pure, no services."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.messages import MAX_PAYLOAD_BYTES, RejectReason, parse_message
from dispatcher.intake import triage
from dispatcher.naming import job_name_for
from tests.support.dispatcher_fakes import PROPERTY

pytestmark = pytest.mark.unit

# The shape of handles and request ids (messages.HANDLE_PATTERN).
NAMES = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?", fullmatch=True)
VALID = st.builds(lambda h, r: json.dumps({"server_handle": h, "request_id": r}).encode(),
                  NAMES, NAMES)
ANY_PAYLOAD = st.one_of(VALID, st.binary(max_size=200),
                        st.text(max_size=100).map(str.encode))


@PROPERTY
@given(st.lists(ANY_PAYLOAD, max_size=12))
def test_every_payload_is_sorted_once_in_claim_order(raws: list[bytes]) -> None:
    sorted_out = triage(raws)
    seen = [a.raw for _, a in sorted_out.valid] + [raw for raw, _ in sorted_out.invalid]
    assert sorted(seen) == sorted(raws)
    assert [a.raw for _, a in sorted_out.valid] == [r for r in raws
                                                   if r in {a.raw for _, a in sorted_out.valid}]


@PROPERTY
@given(VALID)
def test_a_valid_payload_is_ready_to_route(raw: bytes) -> None:
    [(message, item)] = triage([raw]).valid
    assert item.raw == raw
    assert (item.handle, item.request_id) == (message.server_handle, message.request_id)
    assert item.job_name == job_name_for(message)
    # The rewritten payload carries the identity, so a redelivery keeps the Job name.
    again = parse_message(item.new_raw)
    assert again.request_id == message.request_id and again.enqueued_at is not None


def test_a_payload_without_request_id_gets_one_before_routing() -> None:
    [(message, item)] = triage([b'{"server_handle": "srv-1"}']).valid
    assert message.request_id
    assert item.new_raw.encode() != item.raw
    assert json.loads(item.new_raw)["request_id"] == message.request_id


def test_invalid_payloads_keep_their_reason() -> None:
    raws = [b"not json", b"[1]", b'{"server_handle": "bad handle"}',
            b'{"server_handle": "s", "nope": 1}', b"x" * (MAX_PAYLOAD_BYTES + 1)]
    reasons = [invalid.reason for _, invalid in triage(raws).invalid]
    assert reasons == [RejectReason.NOT_JSON, RejectReason.NOT_OBJECT, RejectReason.BAD_HANDLE,
                       RejectReason.UNKNOWN_FIELD, RejectReason.OVERSIZE]
