"""What the stand-in shares: its timings, limits and the kubelet version it reports."""

from __future__ import annotations

import datetime as dt
from typing import Any

Obj = dict[str, Any]

KUBELET_VERSION = "v1.36.3"
LEASE_SECONDS = 2.0        # renewal period (the kubelet renews every 10 s of a 40 s lease)
LEASE_DURATION = 40        # leaseDurationSeconds, as the kubelet's default
STATUS_SECONDS = 10.0      # Ready heartbeat in the Node's status
WATCH_SECONDS = 60         # server-side timeout of one watch request
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 5.0
DEFAULT_GRACE_SECONDS = 30
GRAPH_LAG_SECONDS = 15     # how long a 403 may be the Node authorizer not knowing a pod yet
MESSAGE_LIMIT = 4096                      # bytes of a termination message file
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # FallbackToLogsOnError
HOST_IP = "127.0.0.1"
# Conditions the kubelet owns; others (PodScheduled, DisruptionTarget, ...) are kept as found.
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
# Variables podman itself reads: given as NAME=VALUE; every other value travels in podman's
# environment (``-e NAME``), so secrets never appear on a command line.
PODMAN_OWN = {"HOME", "TMPDIR", "PATH", "USER", "SHELL", "LANG", "LC_ALL"}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


