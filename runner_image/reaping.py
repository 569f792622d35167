"""No process outlives the run.

Mitogen's connection multiplexer detaches into a session of its own. When ansible-runner
kills ansible-playbook (play timeout, SIGTERM) the multiplexer is orphaned and would keep
its SSH session to the server open: in a pod until the container ends, with the local
executor for good. The runner therefore makes itself a child subreaper (Linux), so that
orphans of its descendants are re-parented to it, and stops whatever is left at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PROC = Path("/proc")


def become_subreaper() -> bool:
    """Adopt orphaned descendants instead of letting init adopt them."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return result == 0


def _parent_and_state(pid: str) -> tuple[int, str] | None:
    try:
        stat = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def descendants(root: int) -> dict[int, str]:
    """Live (non-zombie) descendants of ``root``: pid -> command name."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := _parent_and_state(entry.name)):
            children.setdefault(info[0], []).append((int(entry.name), info[1]))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for pid, state in children.get(stack.pop(), []):
            stack.append(pid)
            if state != "Z":
                found[pid] = _name(pid)
    return found


def _name(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def _signal_all(pids: dict[int, str], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _reap_zombies() -> None:
    """Collect exited children; only called when no subprocess of ours is being awaited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


async def stop_leftovers(grace: float = 3.0) -> list[str]:
    """SIGTERM every remaining descendant, SIGKILL what is still there after ``grace``.

    Returns the command names of the processes that had to be stopped.
    """
    me = os.getpid()
    _reap_zombies()
    left = descendants(me)
    if not left:
        return []
    names = sorted(left.values())
    _signal_all(left, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (left := descendants(me)) and loop.time() < deadline:
        await asyncio.sleep(0.05)
        _reap_zombies()
    _signal_all(left, signal.SIGKILL)
    await asyncio.sleep(0.05)
    _reap_zombies()
    return names
