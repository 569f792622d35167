"""Checks result entries against the published JSON schema (what the Scheduler validates
with), not only against the pydantic model: drift between the two fails the test."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from dispatcher.schemas import SCHEMA_DIR

RESULT_SCHEMA: dict[str, Any] = json.loads(
    (SCHEMA_DIR / "provisioner-result.schema.json").read_text())
_VALIDATOR = Draft202012Validator(RESULT_SCHEMA,
                                  format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_published_shape(entry: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """The entry as the Scheduler reads it; fails naming every schema violation."""
    data = json.loads(entry) if isinstance(entry, str | bytes) else entry
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, "result does not match provisioner-result.schema.json: " + "; ".join(
        map(_describe, errors))
    return data


def _describe(error: ValidationError) -> str:
    # Optional fields are anyOf [X, null]: name what is wrong inside X, not "not valid under
    # any of the given schemas".
    deepest = max(error.context, key=lambda e: len(e.absolute_path)) if error.context else error
    return f"{'/'.join(map(str, deepest.absolute_path)) or '<root>'}: {deepest.message}"
