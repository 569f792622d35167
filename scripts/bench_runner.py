#!/usr/bin/env python3
"""Benchmark: the runner end to end vs plain ``ansible-playbook`` on one converged host.

Starts PostgreSQL, Redis and one disposable podman host, converges the play once, then
alternates, for ``--rounds`` rounds:
- the runner as the Job runs it (``python -m runner_image`` with the dispatcher's
  environment): wall time from process start to exit;
- ``ansible-playbook`` with default settings (an empty ansible.cfg, a fresh ANSIBLE_HOME so
  no warm SSH master is reused, host key checking off as the only change) on the same play;
- ``ansible-playbook`` alone with the runner's SSH settings but Ansible's own strategy (no
  Mitogen), to separate what those settings gain from what Mitogen gains.
Prints medians, the ratio (keep <= 0.58, goal 0.5) and the runner's own time outside the
play (keep <= 0.75 s, goal 0.5 s), split into phases from the runner's log timestamps, and
the time from the runner's launch to the play's first event (what the play waits for,
whether the steps before it overlap ansible-playbook's start-up or not).

With ``--venv DIR`` the runner and both ansible-playbook baselines run on that venv's
interpreter instead of this one, e.g. one made from the Debian python3 the runner image
ships (a distribution's build of CPython is often much faster than a self-compiled one):
    /usr/bin/python3 -m venv /tmp/ip
    /tmp/ip/bin/pip install -r <(python3 scripts/image/requirements.py pyproject.toml runner)

Usage: .venv/bin/python scripts/bench_runner.py [--rounds 5] [--project-dir DIR]
       [--playbook playbooks/bench.yml] [--venv DIR] [--tasks] [--log FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.hosts import vps_host
from tests.support.services import postgres_server, redis_server

DEFAULT_PROJECT = REPO / "tests" / "runner" / "plays"
CREDENTIALS_KEY = "bench-credentials-key"
REDIS_PASSWORD = "bench-redis"


def children_cpu() -> float:
    """CPU seconds used so far by finished child processes (and the children they waited
    for): less sensitive than wall time to other load on the machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    return path, (directory / f"{name}.pub").read_text().strip()


def cli(python: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "runner_image", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, check=False)


def interpreter(python: str) -> str:
    """The interpreter's version and the binary the venv points at."""
    return subprocess.run(
        [python, "-c", "import os, platform, sys; "
         "print(platform.python_version(), os.path.realpath(sys.executable))"],
        capture_output=True, text=True, check=True).stdout.strip()


def create_database(dsn: str, password: str) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(dsn, password=password)
        await conn.execute("CREATE DATABASE bench")
        await conn.close()

    asyncio.run(create())


def task_times(stderr: str) -> list[tuple[str, float]]:
    """Per-task seconds inside the play, from the streamed Ansible events."""
    times: list[tuple[str, float]] = []
    start: tuple[str, float] | None = None
    for line in stderr.splitlines():
        entry = json.loads(line)
        if entry["event"] != "ansible event":
            continue
        stamp = datetime.fromisoformat(entry["ts"]).timestamp()
        kind = entry.get("ansible_event")
        if kind == "playbook_on_play_start":
            start = ("(ansible start)", stamp)
        if kind in {"playbook_on_task_start", "playbook_on_stats"} and start:
            times.append((start[0], stamp - start[1]))
        if kind == "playbook_on_task_start":
            start = (entry.get("task") or "?", stamp)
    return times


def ansible_seconds(stderr: str) -> float:
    """Time ansible-playbook itself ran: from ansible-runner's "starting" to its final status
    (so importing ansible-runner and preparing its directory count as the runner's own).
    The first play's process starts before the SSH check and is held at its gate until the
    check and the key installation are done: what they take beyond ansible-playbook's own
    start-up would show up here, as a longer play."""
    total, began = 0.0, None
    for line in stderr.splitlines():
        entry = json.loads(line)
        if entry["event"] != "ansible status":
            continue
        stamp = datetime.fromisoformat(entry["ts"]).timestamp()
        if entry["ansible_status"] == "starting":
            began = stamp
        elif entry["ansible_status"] not in {"running", "abandoned"} and began is not None:
            total += stamp - began
            began = None
    return total


def phases(stderr: str, launched: float, exited: float) -> dict[str, float]:
    """Seconds between the runner's milestones, from its JSON log lines (``launched`` and
    ``exited``: wall-clock times around the process)."""
    marks: dict[str, float] = {"launched": launched, "exited": exited}
    for line in stderr.splitlines():
        entry = json.loads(line)
        stamp = datetime.fromisoformat(entry["ts"]).timestamp()
        if entry["event"] == "ansible status":
            marks.setdefault(f"ansible {entry['ansible_status']}", stamp)
        marks.setdefault(entry["event"], stamp)
    def gap(a: str, b: str) -> float:
        return marks[b] - marks[a] if a in marks and b in marks else float("nan")
    return {
        "start-up (interpreter, imports)": gap("launched", "run started"),
        "claim": gap("run started", "server claimed"),
        "ssh check": gap("server claimed", "ssh check passed"),
        "keys": gap("ssh check passed", "keys installed"),
        "play release": gap("keys installed", "play starting"),
        # ansible-playbook starts before the SSH check and waits at its gate: the check
        # and the key installation run inside its start-up, not after it.
        "ansible-playbook started ahead": gap("ansible starting", "play starting"),
        # What the play's tasks wait for: every step before them, overlapped or not.
        "launch to the first play event": gap("launched", "ansible event"),
        "report": gap("play finished", "run finished"),
        "exit": gap("run finished", "exited"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--project-dir", type=Path, default=DEFAULT_PROJECT)
    parser.add_argument("--playbook", default="playbooks/bench.yml")
    parser.add_argument("--tasks", action="store_true", help="print per-task times")
    parser.add_argument("--log", type=Path, help="write the last runner round's log here")
    parser.add_argument("--venv", type=Path,
                        help="run the runner and ansible-playbook from this venv (default: "
                             "the one running this script)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench", dir="/tmp"))
    try:
        return bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path) -> int:
    key_path, public = keypair(work, "provisioner")
    _, orchestrator = keypair(work, "orchestrator")
    scratch = work / "s"
    scratch.mkdir()
    python = str(args.venv / "bin" / "python") if args.venv else sys.executable
    with postgres_server() as pg, redis_server(password=REDIS_PASSWORD) as rds, \
            vps_host(name_prefix="infra-bench") as host:
        host.authorize_key(public)
        create_database(pg.dsn(), pg.password)
        env = {
            "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO),
            "DATABASE_URL": pg.dsn("bench"), "DATABASE_PASSWORD": pg.password,
            "CREDENTIALS_KEY": CREDENTIALS_KEY,
            "REDIS_URL": rds.url, "REDIS_PASSWORD": rds.password or "",
            "SSH_PRIVATE_KEY": key_path.read_text(), "ORCHESTRATOR_SSH_PUBLIC_KEY": orchestrator,
            "PLAY_PROJECT_DIR": str(args.project_dir), "SETUP_PLAYBOOK": args.playbook,
            "RUNNER_SCRATCH_DIR": str(scratch),
        }
        for command in (["migrate"], ["register-server", "--handle", "bench", "--address",
                                      host.address, "--port", str(host.ssh_port)]):
            done = cli(python, command, env)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1

        last_log = {"stderr": ""}
        cpu: dict[str, Any] = {"start": 0.0, "runner": [], "plain": [], "tuned": []}

        def runner_once() -> tuple[float, float, dict[str, float]]:
            msg = {"server_handle": "bench", "request_id": uuid.uuid4().hex,
                   "enqueued_at": "2026-01-01T00:00:00+00:00"}
            cpu["start"] = children_cpu()
            started, launched = time.perf_counter(), time.time()
            done = subprocess.run([python, "-m", "runner_image"], cwd=REPO,
                                  env={**env, "PROVISIONER_MESSAGE": json.dumps(msg),
                                       "JOB_NAME": "bench"},
                                  capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            cpu["runner"].append(children_cpu() - cpu["start"])
            last_log["stderr"] = done.stderr
            if done.returncode:
                raise SystemExit(f"runner failed ({done.returncode}):\n{done.stderr[-3000:]}")
            return wall, ansible_seconds(done.stderr), phases(done.stderr, launched, time.time())

        empty_cfg = work / "empty.cfg"
        empty_cfg.write_text("")
        inventory = work / "inventory.ini"
        inventory.write_text(f"bench ansible_host={host.address} ansible_port={host.ssh_port} "
                             f"ansible_user=root\n")
        ansible_playbook = str(Path(python).with_name("ansible-playbook"))

        tuned_inventory = work / "tuned.ini"
        tuned_inventory.write_text(inventory.read_text().strip()
                                   + " ansible_python_interpreter=/usr/bin/python3\n")

        def playbook_once(samples: str, inventory_file: Path, settings: dict[str, str]) -> float:
            """ansible-playbook alone (no ansible-runner), fresh ANSIBLE_HOME, empty config."""
            home = Path(tempfile.mkdtemp(prefix="ah", dir=work))
            env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                   "ANSIBLE_CONFIG": str(empty_cfg), "ANSIBLE_HOME": str(home),
                   "ANSIBLE_HOST_KEY_CHECKING": "False", **settings}
            cpu["start"] = children_cpu()
            started = time.perf_counter()
            done = subprocess.run([ansible_playbook, "-i", str(inventory_file), "--private-key",
                                   str(key_path), str(args.project_dir / args.playbook)],
                                  cwd=work, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            cpu[samples].append(children_cpu() - cpu["start"])
            if done.returncode:
                raise SystemExit(f"ansible-playbook failed:\n{done.stdout[-3000:]}")
            return wall

        def plain_once() -> float:
            return playbook_once("plain", inventory, {})

        def tuned_once() -> float:
            """The runner's SSH settings, Ansible's own strategy."""
            return playbook_once("tuned", tuned_inventory, {
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
                "ANSIBLE_INVENTORY_ENABLED": "ini"})

        print(f"converging {args.playbook} on {host.name} ...", flush=True)
        runner_once()
        plain_once()
        for samples in ("runner", "plain", "tuned"):
            cpu[samples].clear()
        runner_walls, plays, overheads, plain_walls, tuned_walls = [], [], [], [], []
        phase_samples: dict[str, list[float]] = {}
        for i in range(args.rounds):
            steps = [runner_once, plain_once, tuned_once]
            order = steps[i % 3:] + steps[:i % 3]  # rotate, so load drift hits all alike
            for step in order:
                if step is runner_once:
                    wall, play, ph = runner_once()
                    runner_walls.append(wall)
                    plays.append(play)
                    overheads.append(wall - play)
                    for name, value in ph.items():
                        phase_samples.setdefault(name, []).append(value)
                elif step is plain_once:
                    plain_walls.append(plain_once())
                else:
                    tuned_walls.append(tuned_once())
            print(f"round {i + 1}: runner {runner_walls[-1]:.2f}s (play {plays[-1]:.2f}s), "
                  f"ansible-playbook {plain_walls[-1]:.2f}s, tuned {tuned_walls[-1]:.2f}s",
                  flush=True)

    if args.log:
        args.log.write_text(last_log["stderr"])
    if args.tasks:
        print("\nper task, last runner round:")
        for name, seconds in task_times(last_log["stderr"]):
            print(f"  {seconds:6.2f} s  {name}")
    med = statistics.median
    ratio = med(runner_walls) / med(plain_walls)
    print()
    print(f"play: {args.playbook} ({args.rounds} rounds, converged host, medians)")
    print(f"interpreter: {python} ({interpreter(python)})")
    print(f"  plain ansible-playbook (defaults)   {med(plain_walls):6.2f} s")
    print(f"  ansible-playbook, runner's settings {med(tuned_walls):6.2f} s   (pipelining, "
          "ControlMaster, fixed interpreter; no Mitogen)")
    print(f"  runner end to end                   {med(runner_walls):6.2f} s")
    print(f"    of which ansible-playbook ran      {med(plays):6.2f} s")
    print(f"    runner's own work outside the play {med(overheads):6.2f} s   "
          "(keep <= 0.75 s, goal 0.5 s)")
    for name, values in phase_samples.items():
        print(f"      {name:<32} {med(values):6.3f} s")
    print(f"  ratio runner / ansible-playbook      {ratio:6.2f}     (keep <= 0.58, goal 0.50)")
    print("controller CPU seconds (all local processes, medians; less sensitive to load):")
    for name in ("plain", "tuned", "runner"):
        print(f"  {name:<8} {med(cpu[name]):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
