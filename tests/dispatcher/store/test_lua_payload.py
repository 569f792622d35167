"""The scripts read a payload's server and action themselves (lua.PAYLOAD_FUNCTIONS), to take
a slot or hold a message at its action's cap before any dispatcher parses it: on a real
Redis, for generated payloads, they agree with ProvisionerMessage wherever the model accepts
the message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from contracts.messages import InvalidMessage, parse_message
from dispatcher.store import lua
from tests.support.dispatcher_fakes import PROPERTY
from tests.support.services import RedisServer

READ = lua.PAYLOAD_FUNCTIONS + """
local handle, msg = read_payload(ARGV[1])
return {handle or false, action_of(msg) or false}
"""

NAMES = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?", fullmatch=True)
# What a producer might put in a flag: the booleans the model accepts and what it refuses.
FLAG = st.one_of(st.booleans(), st.none(), st.integers(-1, 2), st.sampled_from(
    ["true", "false", "", "1"]), st.floats(allow_nan=False), st.lists(st.booleans(), max_size=1))
MESSAGE = st.fixed_dictionaries(
    {"server_handle": st.one_of(NAMES, st.text(max_size=70), st.integers())},
    optional={"force_reinstall": FLAG, "is_recovery": FLAG, "request_id": NAMES,
              "enqueued_at": st.just("2026-12-07T10:00:00+00:00")})


@pytest.fixture(scope="module")
def read(redis_srv: RedisServer) -> Iterator[Any]:
    client = redis.Redis(host="127.0.0.1", port=redis_srv.port, password=redis_srv.password)
    yield client.register_script(READ)
    client.close()


@PROPERTY
@given(MESSAGE)
def test_the_scripts_read_the_server_and_action_the_model_reads(read: Any,
                                                                obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    handle, action = (v.decode() if isinstance(v, bytes) else None for v in read(args=[raw]))
    try:
        message = parse_message(raw)
    except InvalidMessage:
        # Refused by the dispatcher once claimed: the scripts may read anything here, as
        # long as they never take a slot under a name the model refuses.
        if handle is not None:
            assert parse_message(json.dumps({"server_handle": handle})).server_handle == handle
        return
    assert (handle, action) == (message.server_handle, str(message.action)), raw


@PROPERTY
@given(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode)))
def test_an_unreadable_payload_has_no_server_and_no_action(read: Any, raw: bytes) -> None:
    handle, action = read(args=[raw])
    try:
        message = parse_message(raw)
    except InvalidMessage:
        return
    assert handle.decode() == message.server_handle
    assert action.decode() == str(message.action)
