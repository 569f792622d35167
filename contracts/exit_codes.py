"""Process exit codes of the runner (documented in README.md).

A contract: the dispatcher's podFailurePolicy fails a Job at once on every code but SUCCESS.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILED = 10
    UNREACHABLE = 11
    TIMED_OUT = 12
    REJECTED = 13
    COULD_NOT_REPORT = 14
    CANCELLED = 15
