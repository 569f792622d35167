"""The JSON-lines logs both deployables write (contracts/logs.py), read as an SRE reads them:
one JSON object a line, the context given in ``extra=`` as top-level fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from contracts.logs import configure_logging

pytestmark = pytest.mark.unit


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("dispatcher", "info", stream=out)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_fields_are_top_level_so_jq_can_select_them(stream: io.StringIO) -> None:
    logging.getLogger("dispatcher").info(
        "Job created", extra={"server_handle": "web-7", "job_name": "prov-web-7-abc",
                              "request_id": "r-1"})
    [line] = lines(stream)
    assert {k: line[k] for k in ("level", "service", "logger", "event", "server_handle",
                                 "job_name", "request_id")} == {
        "level": "info", "service": "dispatcher", "logger": "dispatcher",
        "event": "Job created", "server_handle": "web-7", "job_name": "prov-web-7-abc",
        "request_id": "r-1"}
    assert str(line["ts"]).endswith("+00:00")


def test_an_exception_is_one_field_naming_its_type_and_message(stream: io.StringIO) -> None:
    try:
        raise ConnectionError("Redis at 127.0.0.1:6379 refused the connection")
    except ConnectionError:
        logging.getLogger("dispatcher").exception("claim failed; retrying")
    [line] = lines(stream)
    assert line["exception"] == "ConnectionError: Redis at 127.0.0.1:6379 refused the connection"
    assert "\n" not in stream.getvalue().rstrip("\n")  # no traceback lines


def test_values_json_cannot_encode_are_written_as_text(stream: io.StringIO) -> None:
    logging.getLogger("runner").warning("odd value", extra={"path": object.__new__(object)})
    [line] = lines(stream)
    assert str(line["path"]).startswith("<object object at")


def test_client_libraries_debug_lines_stay_quiet(stream: io.StringIO) -> None:
    logging.getLogger("urllib3").info("Starting new HTTPS connection: body and URL")
    logging.getLogger("kubernetes").info("response body: ...")
    assert stream.getvalue() == ""
