"""The vocabularies of watching: which resources the dispatcher watches, and the types of
the events a watch streams (the API server's own words)."""

from __future__ import annotations

from enum import StrEnum


class WatchKind(StrEnum):
    """The resources watched (the ``kind`` of a Sync or Change)."""

    JOBS = "jobs"
    PODS = "pods"
    EVENTS = "events"


class ChangeType(StrEnum):
    """The ``type`` of a watch event."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"  # a newer resourceVersion, no object change
    ERROR = "ERROR"  # the watch ended (410 Gone: list again)


# The types that change an object (a Change is delivered for each).
CHANGES = (ChangeType.ADDED, ChangeType.MODIFIED, ChangeType.DELETED)
