"""The published JSON Schemas match the models and describe real entries."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest

from contracts.results import Reporter, ResultEntry, ResultError, ResultStatus
from dispatcher.schemas import SCHEMA_DIR, SCHEMAS, render

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_checked_in_schema_is_current(name: str) -> None:
    assert (SCHEMA_DIR / name).read_text() == render(name), \
        "run `python -m dispatcher schemas` and commit the result"


def schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


def test_message_schema_accepts_and_rejects_like_the_dispatcher() -> None:
    s = schema("provisioner-message.schema.json")
    jsonschema.validate({"server_handle": "srv-1"}, s)
    jsonschema.validate({"server_handle": "srv-1", "is_recovery": True, "request_id": "r-1"}, s)
    jsonschema.validate({"server_handle": "srv-1", "plan": True, "is_recovery": True}, s)
    for bad in ({"server_handle": "srv 1"}, {"server_handle": "s", "extra": 1},
                {"server_handle": "s", "force_reinstall": True, "is_recovery": True},
                {"server_handle": "s", "plan": True, "force_reinstall": True},
                {"server_handle": "s", "plan": "yes"}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, s)


def test_result_schema_describes_a_result() -> None:
    entry = ResultEntry(request_id="r", server_handle="s", status=ResultStatus.FAILED,
                        reported_by=Reporter.DISPATCHER, finished_at=datetime.now(UTC),
                        error=ResultError(kind="oom_killed", message="OOMKilled: raise memory"))
    jsonschema.validate(json.loads(entry.to_json()), schema("provisioner-result.schema.json"))
