"""Which Redis errors are a passing state of the server (retry) and which are not.

Transient: the connection is gone or timed out; the server is loading its dataset
(``LOADING``); a failover is under way (``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``); we
talk to a replica that was just demoted (``READONLY``); the server restarted and forgot
its Lua scripts (``NOSCRIPT``: the next call loads the script again); the server is busy
running a script (``BUSY``); it is out of memory (``OOM``: the operator frees memory; the
message waits in Redis meanwhile). A refused password is retried too (redis-py reports it
as a connection error; a rotated secret is fixed without a restart, and the log names
REDIS_PASSWORD). Anything else (a script bug, a wrong key type) is a bug and surfaces: its
loop crashes, is logged and restarted by the supervisor.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_TRANSIENT_TYPES = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, NoScriptError,
                    ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError,
                    OutOfMemoryError)
# Error prefixes redis-py may deliver as a plain ResponseError (e.g. inside a script).
_TRANSIENT_PREFIXES = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY",
                       "NOSCRIPT", "BUSY", "OOM", "NOREPLICAS", "UNBLOCKED")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, ResponseError):
        text = str(exc).lstrip()
        # Inside a script the server prefixes the command's error with its own words.
        return any(text.startswith(p) or f" {p} " in f" {text} " for p in _TRANSIENT_PREFIXES)
    return False
