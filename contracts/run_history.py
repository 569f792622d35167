"""The run history (PostgreSQL table ``runs``): its vocabulary and the rule for its message.

One row per request id. The dispatcher inserts it when it creates the Job and completes it
when the Job ends; the runner fills in what only it knows (phases, outcome, counts, ports).
Both sides bound and scrub the message the same way, here, so a row never holds more than
``MESSAGE_LIMIT`` characters or a secret-looking value, whoever wrote it.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

RUNS_TABLE = "runs"
# The group role the migration grants the dispatcher's privileges to (see
# runner_image/migrations/0002_runs.sql); a login role is made a member of it.
DISPATCHER_ROLE = "infra_service_dispatcher"
MESSAGE_LIMIT = 1000
MASK = "***"


class Phase(StrEnum):
    """The phases of a run whose duration the row keeps (``phases``: phase -> seconds)."""

    LOCK = "lock"            # the server's advisory lock and its row
    SSH_CHECK = "ssh_check"  # the SSH check, or the wait for SSH after a reinstall
    REINSTALL = "reinstall"  # the provider's reinstall
    KEYS = "keys"            # the deploy key and the runner's own key
    PLAY = "play"            # the Ansible plays
    REPORT = "report"        # the server's status and the published result


class RunColumns(BaseModel):
    """The columns of a row both sides know: the runner writes them (``RunRow``), the
    dispatcher's CLI reads them back with its own (``RunRecord``). Kept as stored: a status or
    kind outside today's vocabularies (a newer runner) still reads."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    server_handle: str
    job_name: str | None
    runner_version: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    phases: dict[str, float]
    # The outcome: None until a result was published (the dispatcher fills it in when the
    # runner never reported).
    status: str | None
    error_kind: str | None
    reported_by: str | None
    failed_task: str | None
    failed_host: str | None
    message: str | None
    changed_count: int | None
    ok_count: int | None
    ssh_port_before: int | None
    ssh_port_after: int | None


# What looks like a secret whoever wrote the text: key = value pairs whose key says secret,
# credentials in a URL, bearer tokens, PEM blocks. The runner also masks the exact values
# of its own secrets first (runner_image/redaction.py); the dispatcher knows none, so a pod's
# message it records passes through these patterns only.
_SECRET_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
               re.DOTALL),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)(\w*(?:password|passwd|secret|token|api[_-]?key|credentials?)\w*"
               r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"),
    re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(@)"),
)


def scrub(text: str) -> str:
    """Mask the secret-looking parts of ``text``."""
    text = _SECRET_PATTERNS[0].sub(MASK, text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _SECRET_PATTERNS[3].sub(lambda m: f"{m.group(1)}{MASK}{m.group(2)}", text)


def bounded_message(text: str | None) -> str | None:
    """The message as a row keeps it: scrubbed, then cut to MESSAGE_LIMIT characters (the
    scrub first, so a cut never leaves half a secret unmasked)."""
    if text is None:
        return None
    clean = scrub(text)
    if len(clean) <= MESSAGE_LIMIT:
        return clean
    return clean[:MESSAGE_LIMIT - 1] + "\u2026"
