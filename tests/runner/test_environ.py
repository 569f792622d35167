"""Dropping the runner's own copy of secrets (runner_image.environ): after the wipe, the
process's initial environment block (``/proc/<pid>/environ``, readable by any process of
the same user) no longer holds the value. Checked in a child process of its own, whose
environment is the one under test."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.runner.conftest import REPO

SECRET = "wipe-me-database-password-7c1"
_CHILD = """
import os, sys
from runner_image.environ import wipe_initial_environment
os.environ.pop("DATABASE_PASSWORD")
wiped = wipe_initial_environment(["DATABASE_PASSWORD", "NOT_SET_AT_ALL"])
with open(f"/proc/{os.getpid()}/environ", "rb") as f:
    block = f.read()
print(wiped, sys.argv[1].encode() in block, b"KEEP_ME=visible" in block)
"""


def test_a_wiped_value_is_gone_from_the_initial_environment() -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD, SECRET], cwd=REPO, text=True,
                          capture_output=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
                               "DATABASE_PASSWORD": SECRET, "KEEP_ME": "visible"})
    assert done.returncode == 0, done.stderr
    # One value wiped, the secret no longer in the block, other variables untouched.
    assert done.stdout.split() == ["1", "False", "True"]
