"""Holds ansible-playbook before its first play until the runner says go.

The runner starts ansible-playbook while its own SSH check and key installation are still
running, so that Ansible's start-up (about a second of imports, configuration and playbook
parsing) overlaps them. Nothing before ``v2_playbook_on_start`` talks to a host: the
inventory is a local file and the playbook is only parsed. Here the process waits for the
runner's verdict on an inherited pipe (``INFRA_START_GATE_FD``):

- ``go`` and a newline: the plays run;
- anything else, end of file (the runner closed the pipe or died), or no verdict within
  ``INFRA_START_GATE_TIMEOUT`` seconds: ansible-playbook exits with ``GATE_CLOSED_EXIT``
  before any task, having connected to nothing.

Without ``INFRA_START_GATE_FD`` the plugin does nothing.
"""

from __future__ import annotations

import os
import select
import sys
import time

from ansible.plugins.callback import CallbackBase

GATE_FD_VARIABLE = "INFRA_START_GATE_FD"
GATE_TIMEOUT_VARIABLE = "INFRA_START_GATE_TIMEOUT"
GATE_OPEN = b"go\n"
GATE_CLOSED_EXIT = 90


def wait_for_verdict(fd: int, timeout: float | None) -> bytes:
    """What the runner wrote before closing or within ``timeout`` (at most a few bytes)."""
    received = b""
    until = None if timeout is None else time.monotonic() + timeout
    while len(received) < len(GATE_OPEN):
        left = None if until is None else max(0.0, until - time.monotonic())
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, len(GATE_OPEN) - len(received))
        if not chunk:
            break
        received += chunk
    return received


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "infra_start_gate"
    # Active wherever it is on the callback path; inert without the environment variable.
    CALLBACK_NEEDS_ENABLED = False

    def v2_playbook_on_start(self, playbook: object) -> None:
        raw_fd = os.environ.pop(GATE_FD_VARIABLE, None)
        if raw_fd is None:
            return
        raw_timeout = os.environ.pop(GATE_TIMEOUT_VARIABLE, "")
        fd = int(raw_fd)
        try:
            verdict = wait_for_verdict(fd, float(raw_timeout) if raw_timeout else None)
        finally:
            os.close(fd)  # the workers forked later must not hold it
        if verdict != GATE_OPEN:
            sys.stdout.write("infra-service: the runner did not release the play (its SSH "
                             "check or key installation did not succeed); nothing was run\n")
            sys.stdout.flush()
            os._exit(GATE_CLOSED_EXIT)
