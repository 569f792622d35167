"""The ProvisionerMessage contract: what is accepted, and the exact reason for what is not."""

from __future__ import annotations

import json

import pytest

from contracts.messages import MAX_PAYLOAD_BYTES, Action, InvalidMessage, parse_message

pytestmark = pytest.mark.unit

INVALID = [
    (b"not json", "not_json", None),
    (b"\xff\xfe", "not_json", None),
    (b"[1, 2]", "not_object", None),
    (b'"srv-1"', "not_object", None),
    (b"null", "not_object", None),
    (b"{}", "missing_field", None),
    (b'{"server_handle": 7}', "wrong_type", None),
    (b'{"server_handle": ""}', "bad_handle", None),
    (b'{"server_handle": "-srv"}', "bad_handle", None),
    (b'{"server_handle": "srv 1"}', "bad_handle", None),
    (b'{"server_handle": "srv;rm -rf"}', "bad_handle", None),
    (json.dumps({"server_handle": "a" * 64}).encode(), "bad_handle", None),
    (b'{"server_handle": "srv-1", "force_reinstall": "yes"}', "wrong_type", "srv-1"),
    (b'{"server_handle": "srv-1", "is_recovery": 1}', "wrong_type", "srv-1"),
    (b'{"server_handle": "srv-1", "is_recovry": true}', "unknown_field", "srv-1"),
    (b'{"server_handle": "srv-1", "force_reinstall": true, "is_recovery": true}',
     "conflicting_flags", "srv-1"),
    (b'{"server_handle": "srv-1", "plan": true, "force_reinstall": true}',
     "conflicting_flags", "srv-1"),
    (b'{"server_handle": "srv-1", "plan": "true"}', "wrong_type", "srv-1"),
    (b'{"server_handle": "srv-1", "request_id": "has space"}', "wrong_type", "srv-1"),
    (b'{"server_handle": "srv-1", "enqueued_at": "yesterday"}', "wrong_type", "srv-1"),
    (b'{"server_handle": "srv-1", "enqueued_at": "2026-01-01T00:00:00"}', "wrong_type", "srv-1"),
]


@pytest.mark.parametrize(("payload", "reason", "handle"), INVALID)
def test_invalid_payloads_name_their_reason(payload: bytes, reason: str, handle: str | None
                                            ) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload)
    assert caught.value.reason == reason
    assert caught.value.server_handle == handle
    assert caught.value.detail


def test_oversize_is_rejected_before_parsing() -> None:
    payload = json.dumps({"server_handle": "srv-1", "pad": "x" * MAX_PAYLOAD_BYTES}).encode()
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload)
    assert caught.value.reason == "oversize"
    assert str(MAX_PAYLOAD_BYTES) in caught.value.detail


def test_unknown_field_error_names_the_field() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(b'{"server_handle": "srv-1", "is_recovry": true}')
    assert "is_recovry" in caught.value.detail


def test_defaults_and_actions() -> None:
    plain = parse_message(b'{"server_handle": "srv-1"}')
    assert (plain.force_reinstall, plain.is_recovery, plain.action) == (False, False, Action.SETUP)
    assert parse_message(b'{"server_handle": "s", "is_recovery": true}').action is Action.RECOVERY
    assert parse_message(b'{"server_handle": "s", "force_reinstall": true}').action \
        is Action.REINSTALL


def test_a_plan_plans_setup_or_recovery() -> None:
    assert parse_message(b'{"server_handle": "s"}').plan is False
    setup = parse_message(b'{"server_handle": "s", "plan": true}')
    assert (setup.plan, setup.action) == (True, Action.SETUP)
    recovery = parse_message(b'{"server_handle": "s", "plan": true, "is_recovery": true}')
    assert (recovery.plan, recovery.action) == (True, Action.RECOVERY)
    assert parse_message(recovery.to_json()) == recovery


def test_plan_with_reinstall_is_refused_with_its_reason() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(b'{"server_handle": "s", "plan": true, "force_reinstall": true,'
                      b' "request_id": "r-1"}')
    assert caught.value.reason == "conflicting_flags"
    assert "plan and force_reinstall are mutually exclusive" in caught.value.detail
    assert caught.value.request_id == "r-1"


def test_identity_is_assigned_once_and_survives_a_round_trip() -> None:
    message = parse_message(b'{"server_handle": "srv-1"}').with_identity()
    assert message.request_id and message.enqueued_at
    again = parse_message(message.to_json()).with_identity()
    assert again == message


def test_given_request_id_is_kept() -> None:
    message = parse_message(b'{"server_handle": "srv-1", "request_id": "req-42"}').with_identity()
    assert message.request_id == "req-42"


def test_request_id_of_rejected_message_is_kept_when_readable() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(b'{"server_handle": "srv-1", "request_id": "req-9", "x": 1}')
    assert caught.value.request_id == "req-9"
