"""No process outlives the run (runner_image.reaping): orphans of the run's descendants are
re-parented to it (a child subreaper) and stopped at the end, SIGKILL for one that ignores
SIGTERM. Checked in a child process of its own: in the test process the sweep would stop
the suite's own services."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.runner.conftest import REPO

_CHILD = """
import asyncio, json, os, subprocess, time
from runner_image.reaping import become_subreaper, descendants, stop_leftovers
assert become_subreaper()
# Two detached grandchildren whose parent exits at once (as Mitogen's multiplexer does when
# ansible-playbook is killed); one ignores SIGTERM.
subprocess.run(["sh", "-c", "sleep 60 & (trap '' TERM; exec sleep 61) & exit 0"], check=True)
time.sleep(0.2)
adopted = sorted(descendants(os.getpid()).values())
stopped = asyncio.run(stop_leftovers(grace=0.5))
print(json.dumps({"adopted": adopted, "stopped": stopped, "left": descendants(os.getpid())}))
"""


def test_orphans_are_adopted_and_stopped_even_if_they_ignore_sigterm() -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, text=True,
                          capture_output=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["adopted"] == ["sleep", "sleep"]
    assert report["stopped"] == ["sleep", "sleep"]
    assert report["left"] == {}
