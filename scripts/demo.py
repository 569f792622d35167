#!/usr/bin/env python3
"""One message from the queue to a provisioned host, on this machine, shown as it happens.

Starts Redis, PostgreSQL and one disposable Debian host (podman, systemd, sshd, a root
password like a fresh VPS), registers the host, starts the dispatcher with the local
executor, enqueues a ProvisionerMessage and follows the dispatcher's and runner's JSON
logs. Ends with the result entry, the server's row and the commands to look further;
everything it started is removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts.connections import RedisSettings, create_redis
from tests.support.hosts import vps_host
from tests.support.services import postgres_server, redis_server

HANDLE = "demo-vps-1"


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def need(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        sys.exit(f"demo: `{tool}` is missing ({hint}); scripts/demo.sh installs it on Debian")


def keypair(directory: Path, name: str) -> tuple[str, str]:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def describe(event: dict[str, Any]) -> str | None:
    """A human line for the log events worth showing; None hides the rest."""
    name = event.get("event", "")
    if name == "ansible event":
        kind = event.get("ansible_event", "")
        if kind == "runner_on_ok":
            mark = "changed" if event.get("changed") else "ok"
            return f"    task [{mark:7}] {event.get('task')}"
        if kind in ("runner_on_failed", "runner_on_unreachable"):
            return f"    task [FAILED ] {event.get('task')}: {event.get('module_msg')}"
        if kind == "runner_on_skipped":
            return f"    task [skipped] {event.get('task')}"
        return None
    shown = {
        "Job created": "dispatcher: Job {job_name} created for {server_handle}",
        "run started": "runner: started ({action})",
        "ssh check passed": "runner: SSH answers and authenticates (attempt {attempt})",
        "ssh attempt failed": "runner: SSH attempt {attempt} failed: {kind}",
        "host key recorded": "runner: host key recorded ({fingerprint})",
        "keys installed": "runner: deploy key installed for {deploy_key_user}",
        "play starting": "runner: play {playbook}",
        "play finished": "runner: play {playbook} finished",
        "server status written": "runner: server status -> {status}",
        "result published": "runner: result published",
        "run finished": "runner: finished: {status} (exit {exit_code})",
        "Job finished": "dispatcher: Job finished (succeeded={succeeded})",
        "Job ended without a runner result: failure reported":
            "dispatcher: the runner did not report; failure reported ({reason})",
    }
    template = shown.get(name)
    if template is None:
        return None
    try:
        return template.format(**event)
    except KeyError:
        return template.split(":")[0] + f": {name}"


async def follow(stream: asyncio.StreamReader, log_file: Path) -> None:
    with log_file.open("w") as sink:
        while line := await stream.readline():
            text = line.decode(errors="replace")
            sink.write(text)
            if text.startswith("{"):
                try:
                    human = describe(json.loads(text))
                except json.JSONDecodeError:
                    human = None
                if human:
                    print(human, flush=True)


async def demo(args: argparse.Namespace) -> int:
    for tool, hint in (("podman", "apt-get install podman"), ("redis-server", "redis-server"),
                       ("ssh", "openssh-client"), ("sshpass", "sshpass")):
        need(tool, hint)
    workdir = Path(tempfile.mkdtemp(prefix="infra-demo-"))
    say(f"working directory {workdir} (logs stay there)")
    redis_password = secrets.token_urlsafe(16)
    root_password = secrets.token_urlsafe(16)
    with redis_server(password=redis_password) as redis_srv, postgres_server() as pg, \
            vps_host(privileged=True) as host:
        say(f"Redis on {redis_srv.url}, PostgreSQL on 127.0.0.1:{pg.port}, "
            f"host {host.name} with SSH on 127.0.0.1:{host.ssh_port}")
        host.set_root_password(root_password)
        provisioner_key, _ = keypair(workdir, "provisioner")
        _, deploy_public = keypair(workdir, "orchestrator-deploy")
        env = {
            **os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_password,
            "DATABASE_URL": pg.dsn(), "DATABASE_PASSWORD": pg.password,
            "CREDENTIALS_KEY": secrets.token_urlsafe(24), "SSH_PRIVATE_KEY": provisioner_key,
            "ORCHESTRATOR_SSH_PUBLIC_KEY": deploy_public,
            "RUNNER_SCRATCH_DIR": tempfile.mkdtemp(prefix="rs-", dir="/tmp"),
            "PLAY_VARS": json.dumps(args.play_vars),
            "SERVER_ROOT_PASSWORD": root_password,
            "DISPATCHER_EXECUTOR": "local", "DISPATCHER_REPLICA_ID": "demo",
            "DISPATCHER_HEALTH_PORT": "0", "DISPATCHER_METRICS_PORT": "0",
            "DISPATCHER_LOCAL_COMMAND": json.dumps([sys.executable, "-m", "runner_image", "run"]),
        }
        if args.setup_playbook:
            env["SETUP_PLAYBOOK"] = args.setup_playbook
        say("database: migrations and the server's row (root password stored encrypted)")
        for cmd in (["migrate"], ["register-server", "--handle", HANDLE, "--address",
                                  "127.0.0.1", "--port", str(host.ssh_port), "--user", "root"]):
            subprocess.run([sys.executable, "-m", "runner_image", *cmd], env=env, check=True,
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.pop("SERVER_ROOT_PASSWORD")
        say("dispatcher starting (local executor: each Job is a runner subprocess)")
        dispatcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatcher", "run", env=env, cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert dispatcher.stderr is not None
        logs = asyncio.create_task(follow(dispatcher.stderr, workdir / "dispatcher-and-runner.log"))
        redis = create_redis(RedisSettings(url=redis_srv.url, password=redis_password))
        keys = RedisSettings().keys
        try:
            started = time.monotonic()
            message = {"server_handle": HANDLE, "force_reinstall": False, "is_recovery": False}
            say(f"queued on {keys.queue}: {json.dumps(message)}")
            await redis.lpush(keys.queue, json.dumps(message))
            result = None
            while result is None:
                if dispatcher.returncode is not None:
                    say("the dispatcher exited early; see the log in the working directory")
                    return 1
                raw = await redis.lindex(keys.results, 0)
                result = json.loads(raw) if raw else None
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)  # let the last log lines through
            say(f"result on {keys.results} after {time.monotonic() - started:.0f} s:")
            print(json.dumps(result, indent=2))
            row = subprocess.run(
                ["psql", pg.dsn(), "-x", "-c",
                 "SELECT handle, address, ssh_port, status, status_reason, last_request_id, "
                 "host_key IS NOT NULL AS host_key_recorded, updated_at FROM servers"],
                env={**os.environ, "PGPASSWORD": pg.password}, capture_output=True, text=True)
            say("the server's row in PostgreSQL:")
            print(row.stdout or row.stderr)
            say("look further" + (" (until Ctrl-C):" if args.keep else
                                  " (re-run with --keep to keep everything up):"))
            print(f"  REDIS_URL={redis_srv.url} REDIS_PASSWORD=<in the demo's env> "
                  "python -m dispatcher status   # or: results -n 5\n"
                  f"  ssh -p {host.ssh_port} -i {workdir}/orchestrator-deploy "
                  "root@127.0.0.1   # the Orchestrator's deploy key now works\n"
                  f"  podman exec -it {host.name} bash   # the provisioned host\n"
                  f"  logs: {workdir}/dispatcher-and-runner.log")
            if args.keep:
                with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
                    await asyncio.Event().wait()
            return 0 if result.get("status") == "succeeded" else 1
        finally:
            await redis.aclose()
            if dispatcher.returncode is None:
                dispatcher.terminate()
                await dispatcher.wait()
            await logs
            say("cleaning up: dispatcher stopped; Redis, PostgreSQL and the host are removed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="keep Redis, PostgreSQL, the host and the dispatcher until Ctrl-C")
    parser.add_argument("--setup-playbook", help="another play than playbooks/setup_server.yml")
    parser.add_argument("--play-vars", type=json.loads, default={
        "docker_storage_driver": "vfs",
        "docker_daemon_extra_options": {"default-cgroupns-mode": "private"}},
        help="JSON of play variables (default: what Docker needs inside a container host)")
    raise SystemExit(asyncio.run(demo(parser.parse_args())))


if __name__ == "__main__":
    main()
