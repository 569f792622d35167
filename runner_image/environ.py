"""Dropping the runner's own copy of secret environment variables.

``os.environ.pop`` removes a variable from the environment children inherit, but the
process's original environment block (what ``/proc/<pid>/environ`` shows) still holds the
value: any process of the same user, such as a play task delegated to localhost, could read
it there. So the values are also overwritten in that block, through ``/proc/self/mem``.
"""

from __future__ import annotations

from collections.abc import Iterable


def _environ_block() -> tuple[int, int] | None:
    """Start and end address of this process's initial environment (``/proc/self/stat``)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # Fields 50 and 51 of stat (env_start, env_end), counted after "pid (comm)".
        return int(fields[47]), int(fields[48])
    except (OSError, ValueError, IndexError):
        return None


def wipe_initial_environment(names: Iterable[str]) -> int:
    """Overwrite the values of ``names`` in the initial environment block with NUL bytes.

    Returns how many values were wiped. Call after the values were read and removed from
    ``os.environ`` (libc's ``environ`` then no longer points into the wiped bytes).
    """
    block = _environ_block()
    if block is None or block[1] <= block[0]:
        return 0
    prefixes = {f"{name}=".encode() for name in names}
    wiped = 0
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(block[0])
            data = mem.read(block[1] - block[0])
            offset = 0
            for entry in data.split(b"\0"):
                prefix = next((p for p in prefixes if entry.startswith(p)), None)
                if prefix is not None and len(entry) > len(prefix):
                    mem.seek(block[0] + offset + len(prefix))
                    mem.write(b"\0" * (len(entry) - len(prefix)))
                    wiped += 1
                offset += len(entry) + 1
    except OSError:
        return wiped
    return wiped

