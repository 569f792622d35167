"""JSON Schemas of the two contracts, for the Scheduler's developers.

The files in dispatcher/json_schemas/ are generated from the models; a test keeps them in sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.messages import MAX_PAYLOAD_BYTES, ProvisionerMessage
from contracts.results import ResultEntry

SCHEMA_DIR = Path(__file__).with_name("json_schemas")


def message_schema() -> dict[str, Any]:
    schema = ProvisionerMessage.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "A provisioning request pushed (LPUSH) onto the Redis list provisioner:queue. "
        f"At most {MAX_PAYLOAD_BYTES} bytes. Unknown fields are rejected. force_reinstall and "
        "is_recovery are mutually exclusive, and so are plan and force_reinstall. request_id "
        "is the idempotency key (one Job per request id); the dispatcher generates one when "
        "absent."
    )
    schema["allOf"] = [_not_both("force_reinstall", "is_recovery"),
                       _not_both("plan", "force_reinstall")]
    return schema


def _not_both(first: str, second: str) -> dict[str, Any]:
    """A schema clause refusing ``first`` and ``second`` both true."""
    return {"not": {"properties": {first: {"const": True}, second: {"const": True}},
                    "required": [first, second]}}


def result_schema() -> dict[str, Any]:
    schema = ResultEntry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "The outcome of one ProvisionerMessage, LPUSHed onto provisioner:results. Exactly one "
        "entry per request_id, written by the runner or, when the runner could not, by the "
        "dispatcher (reported_by)."
    )
    return schema


SCHEMAS = {"provisioner-message.schema.json": message_schema,
           "provisioner-result.schema.json": result_schema}


def render(name: str) -> str:
    return json.dumps(SCHEMAS[name](), indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path | None = None) -> list[Path]:
    directory = directory or SCHEMA_DIR
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SCHEMAS:
        path = directory / name
        path.write_text(render(name))
        paths.append(path)
    return paths
