"""Why a write of the run history did not happen: the vocabulary of its metric."""

from __future__ import annotations

from enum import StrEnum


class LostWrite(StrEnum):
    DROPPED = "dropped"  # too many writes waiting for a slow database
    FAILED = "failed"  # the database refused it, was unreachable or too slow
