"""Property tests: whatever the bytes, parse_message returns a valid message or raises
InvalidMessage (never anything else), so no payload can stop the dispatch loop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.messages import (
    MAX_NESTING,
    MAX_PAYLOAD_BYTES,
    InvalidMessage,
    ProvisionerMessage,
    RejectReason,
    parse_message,
)

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=60,
)
fields = st.sampled_from([*ProvisionerMessage.model_fields, "is_recovry", ""])


def _outcome(payload: bytes | str) -> ProvisionerMessage | InvalidMessage:
    try:
        message = parse_message(payload)
    except InvalidMessage as invalid:
        rejected = invalid
    else:
        rejected = None
    if rejected is not None:
        assert isinstance(rejected.reason, RejectReason)
        assert rejected.detail
        return rejected
    # A returned message is a valid one: it survives its own round trip unchanged.
    assert parse_message(message.to_json()) == message
    return message


@PROPERTY
@given(st.binary(max_size=MAX_PAYLOAD_BYTES + 64))
@example(b"[" * 4000 + b"]" * 4000)
@example(b"{\"a\":" * 1300 + b"1" + b"}" * 1300)
@example(b"1" * 4096)
@example('{"server_handle": "srv-1"}'.encode("utf-16"))
@example('{"server_handle": "srv-1"}'.encode("utf-32"))
@example(b"\xef\xbb\xbf" + b'{"server_handle": "srv-1"}')
def test_random_bytes(payload: bytes) -> None:
    _outcome(payload)


@PROPERTY
@given(json_values)
def test_random_json_documents(value: Any) -> None:
    _outcome(json.dumps(value).encode())


@PROPERTY
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["[", "{\"k\":"]))
def test_nesting_of_any_depth(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    payload = (opener * depth + "0" + closer * depth).encode()
    result = _outcome(payload)
    assert isinstance(result, InvalidMessage)
    if len(payload) > MAX_PAYLOAD_BYTES:
        assert result.reason is RejectReason.OVERSIZE
    else:  # where the decoder's recursion limit falls depends on the stack in use
        assert result.reason in (RejectReason.TOO_DEEP, RejectReason.NOT_OBJECT,
                                 RejectReason.UNKNOWN_FIELD, RejectReason.MISSING_FIELD)


@PROPERTY
@given(st.dictionaries(fields, json_values, max_size=6),
       st.sampled_from(["srv-1", "a" * 63, "x", "web.7_b"]))
def test_mutated_valid_messages(extra: dict[str, Any], handle: str) -> None:
    body: dict[str, Any] = {"server_handle": handle, **extra}
    result = _outcome(json.dumps(body).encode())
    if isinstance(result, ProvisionerMessage):
        assert set(body) <= set(ProvisionerMessage.model_fields)


@PROPERTY
@given(st.data())
def test_byte_mutations_of_a_valid_message(data: st.DataObject) -> None:
    payload = bytearray(b'{"server_handle": "srv-1", "request_id": "req-1", '
                        b'"is_recovery": true, "enqueued_at": "2026-01-01T00:00:00Z"}')
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            payload[pos] = data.draw(st.integers(0, 255))
        elif op == "delete" and len(payload) > 1:
            del payload[pos]
        else:
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    _outcome(bytes(payload))


@PROPERTY
@given(st.text(max_size=200))
def test_random_text_including_lone_surrogates(text: str) -> None:
    _outcome(text)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-8-sig"])
def test_other_encodings_are_not_json(encoding: str) -> None:
    valid = '{"server_handle": "srv-1"}'
    assert parse_message(valid.encode()).server_handle == "srv-1"
    with pytest.raises(InvalidMessage) as caught:
        parse_message(valid.encode(encoding))
    assert caught.value.reason is RejectReason.NOT_JSON


@pytest.mark.parametrize("payload", [
    b'{"server_handle": "srv-1", "x": NaN}',
    b'{"server_handle": "srv-1", "x": -Infinity}',
    b'{"server_handle": "srv-1", "server_handle": "srv-2"}',
])
def test_non_rfc_json_is_not_json(payload: bytes) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload)
    assert caught.value.reason is RejectReason.NOT_JSON


def test_deep_nesting_is_too_deep() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(b"[" * 2000 + b"]" * 2000)
    assert caught.value.reason is RejectReason.TOO_DEEP


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_the_depth_limit_is_the_same_on_every_interpreter(opener: str) -> None:
    """33 levels are too_deep whatever the interpreter's recursion limit; 32 are parsed
    (and refused for what they are: not a message)."""
    closer = "]" if opener == "[" else "}"
    limit = MAX_NESTING
    with pytest.raises(InvalidMessage) as caught:
        parse_message((opener * (limit + 1) + "1" + closer * (limit + 1)).encode())
    assert caught.value.reason is RejectReason.TOO_DEEP
    with pytest.raises(InvalidMessage) as caught:
        parse_message((opener * limit + "1" + closer * limit).encode())
    assert caught.value.reason is not RejectReason.TOO_DEEP


def test_brackets_inside_strings_are_not_nesting() -> None:
    # 60 brackets, backslashes and quotes inside one string value: nesting depth 1, so the
    # payload is judged on its fields (a handle cannot hold them).
    handle = '[{\\"' * 30
    with pytest.raises(InvalidMessage) as caught:
        parse_message(json.dumps({"server_handle": handle}).encode())
    assert caught.value.reason is RejectReason.BAD_HANDLE
