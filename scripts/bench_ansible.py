#!/usr/bin/env python3
"""Converge and re-run times of setup_server.yml on a disposable Debian host.

Measures, in one run on one fresh host:
  1. the converge of the fresh host (ansible/ansible.cfg settings),
  2. re-runs on the converged host with ansible/ansible.cfg (pipelining, ControlPersist with
     a short ControlPath, distribution facts only),
  3. re-runs on the same host with ansible-core's defaults (no pipelining, default SSH
     arguments and control path): the baseline the ratio is taken against,
  4. fact gathering alone (the setup module), all facts against the subset the play uses.
Measurements alternate between the settings compared, so load on the machine hits both alike.

Usage: .venv/bin/python scripts/bench_ansible.py [--reruns N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.hosts import vps_host
from tests.support.playrun import ANSIBLE_CFG, ANSIBLE_DIR, VENV_BIN, Target, make_key, run_play

# The host is a container: Docker there needs vfs and a private cgroup namespace.
HOST_VARS = {"docker_storage_driver": "vfs",
             "docker_daemon_extra_options": {"default-cgroupns-mode": "private"}}
PLAY_SUBSET = "!all,!min,distribution"  # what setup_server.yml gathers


def gather_facts(inventory: Path, subset: str) -> float:
    """Seconds for one setup module run (plus ansible's start-up, the same for both)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_CFG)}
    started = time.monotonic()
    subprocess.run([str(VENV_BIN / "ansible"), "all", "-i", str(inventory), "-m",
                    "ansible.builtin.setup", "-a", f"gather_subset={subset}"],
                   check=True, capture_output=True, env=env)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=3, help="re-runs per setting (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ansible-") as tmp:
        work = Path(tmp)
        key, public = make_key(work, "provisioner")
        default_cfg = work / "defaults.cfg"
        default_cfg.write_text(f"[defaults]\nroles_path = {ANSIBLE_DIR / 'roles'}\n")
        baseline = {"ANSIBLE_CONFIG": str(default_cfg)}
        with vps_host(privileged=True, name_prefix="infra-bench") as host:
            host.authorize_key(public)
            target = Target(host=host, workdir=work, port=host.ssh_port, key_file=key)
            target.trust_host_key()
            print("converging a fresh host ...", flush=True)
            first = run_play("setup_server.yml", target, HOST_VARS)
            if not first.ok:
                print(first.describe(), file=sys.stderr)
                return 1
            tuned: list[float] = []
            default: list[float] = []
            for round_ in range(args.reruns):
                for label, times, env in (("tuned", tuned, None), ("default", default, baseline)):
                    again = run_play("setup_server.yml", target, HOST_VARS, envvars=env)
                    if not again.ok or again.changed:
                        print(again.describe(), file=sys.stderr)
                        return 1
                    times.append(again.duration)
                    print(f"  re-run {round_ + 1} ({label}): {again.duration:.1f} s", flush=True)
            inventory = target.inventory(work / "inventory.json")
            facts_all: list[float] = []
            facts_subset: list[float] = []
            for _ in range(5):
                facts_all.append(gather_facts(inventory, "all"))
                facts_subset.append(gather_facts(inventory, PLAY_SUBSET))
    tasks = sum(first.stats["ok"].values()) + sum(first.stats["skipped"].values())
    print()
    print(f"fresh converge (ansible.cfg settings): {first.duration:6.1f} s"
          f"  ({tasks} tasks, {first.changed} changed)")
    print(f"re-run, ansible.cfg settings (median of {len(tuned)}): "
          f"{statistics.median(tuned):6.1f} s  {[round(t, 1) for t in tuned]}")
    print(f"re-run, ansible-core defaults (median of {len(default)}): "
          f"{statistics.median(default):6.1f} s  {[round(t, 1) for t in default]}")
    ratio = statistics.median(tuned) / statistics.median(default)
    print(f"re-run ratio, tuned / defaults: {ratio:.2f}")
    print(f"fact gathering, all facts (median of 5):      {statistics.median(facts_all):6.2f} s")
    print(f"fact gathering, {PLAY_SUBSET} (median of 5): "
          f"{statistics.median(facts_subset):6.2f} s")
    print("settings: pipelining=true; ssh_args ControlMaster=auto ControlPersist=120s; "
          "control_path=%(directory)s/%%C; gather_subset ['!all', '!min', 'distribution']")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
