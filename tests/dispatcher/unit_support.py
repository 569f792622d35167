"""Helpers of the dispatcher's unit tests (pure logic, no services)."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
from hypothesis import settings

from dispatcher.schemas import SCHEMA_DIR

# No per-example deadline: the machine is shared, and a slow example is not a failure.
PROPERTY = settings(deadline=None)


@functools.cache
def _result_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / "provisioner-result.schema.json").read_text())
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return validator


def assert_valid_result(result_json: str) -> dict[str, Any]:
    """A result entry as the Scheduler reads it: valid against the published schema."""
    entry: dict[str, Any] = json.loads(result_json)
    _result_validator().validate(entry)
    return entry
