"""The SRE command line when Redis or the Kubernetes API does not answer: one line naming the
URL tried and what to check, exit code 3, never a traceback (and never the password). The
Kubernetes API is the real API server: answering, refusing, stopped, or a port nothing
listens on."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.dispatcher.test_cli import cli
from tests.support.dispatch import DispatcherProcess
from tests.support.kube_env import KubeEnv
from tests.support.services import RedisServer, free_port

EXIT_UNREACHABLE = 3


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("command", [["status"], ["results"], ["dead-letter"],
                                     ["enqueue", "web-7"]])
def test_unreachable_redis_is_one_line(redis_srv: RedisServer, command: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = cli(redis_srv, *command, REDIS_URL=url, REDIS_SOCKET_TIMEOUT="2")
    assert done.returncode == EXIT_UNREACHABLE
    line = _one_line(done.stderr)
    assert line.startswith(f"cannot reach Redis at {url}: ")
    assert "check REDIS_URL, REDIS_PASSWORD" in line


def test_wrong_redis_password_is_one_line_without_the_password(redis_srv: RedisServer) -> None:
    done = cli(redis_srv, "status", REDIS_PASSWORD="not-the-Pa55word-x9")
    assert done.returncode == EXIT_UNREACHABLE
    line = _one_line(done.stderr)
    assert line.startswith(f"cannot reach Redis at {redis_srv.url}: ")
    assert "not-the-Pa55word-x9" not in done.stderr + done.stdout


def _kubeconfig(path: Path, server: str, ca: Path, token: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                               "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def _api_fails(done: subprocess.CompletedProcess[str], server: str) -> str:
    assert done.returncode == EXIT_UNREACHABLE, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    ok, failed = done.stdout.splitlines()
    assert ok.startswith("ok: Redis")
    assert failed.startswith(f"FAIL: cannot reach the Kubernetes API at {server}: "), failed
    assert "check DISPATCHER_KUBECONFIG" in failed
    line: str = failed
    return line


def test_check_names_each_dependency(redis_srv: RedisServer, kube_env: KubeEnv,
                                     tmp_path: Path) -> None:
    """Answering: the dispatcher's ServiceAccount lists Jobs in its namespace through the
    real API server. Refusing: the same token for a namespace it has no grant in (403). No
    answer: a port nothing listens on."""
    done = cli(redis_srv, "check", DISPATCHER_KUBECONFIG=str(kube_env.kubeconfig),
               DISPATCHER_NAMESPACE=kube_env.namespace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"ok: Redis at {redis_srv.url} answers",
        f"ok: Kubernetes API at {kube_env.proxy.server} answers (Jobs in "
        f"{kube_env.namespace})"]

    refused = cli(redis_srv, "check", DISPATCHER_KUBECONFIG=str(kube_env.kubeconfig),
                  DISPATCHER_NAMESPACE="kube-system")
    line = _api_fails(refused, kube_env.proxy.server)
    assert "HTTP 403 Forbidden listing Jobs in kube-system" in line

    dead_api = f"https://127.0.0.1:{free_port()}"
    token = json.loads(kube_env.kubeconfig.read_text())["users"][0]["user"]["token"]
    bad = _kubeconfig(tmp_path / "bad", dead_api, kube_env.cp.pki.path("ca.crt"), token)
    done = cli(redis_srv, "check", DISPATCHER_KUBECONFIG=str(bad),
               DISPATCHER_API_TIMEOUT_SECONDS="3")
    _api_fails(done, dead_api)
    assert token not in done.stdout + done.stderr


async def test_check_with_the_api_server_stopped(redis_srv: RedisServer, kube_env: KubeEnv,
                                                 tmp_path: Path) -> None:
    """The real kube-apiserver killed: straight to it (connection refused) and through the
    proxy in front of it (the connection is closed unanswered)."""
    cp = kube_env.cp
    token = json.loads(kube_env.kubeconfig.read_text())["users"][0]["user"]["token"]
    direct = _kubeconfig(tmp_path / "direct", cp.server, cp.pki.path("ca.crt"), token)
    kube_env.api_down()
    try:
        for kubeconfig, server, why in (
                (direct, cp.server, "Connection refused"),
                (kube_env.kubeconfig, kube_env.proxy.server, "closed connection")):
            done = await asyncio.to_thread(
                cli, redis_srv, "check", DISPATCHER_KUBECONFIG=str(kubeconfig),
                DISPATCHER_NAMESPACE=kube_env.namespace, DISPATCHER_API_TIMEOUT_SECONDS="3")
            assert why in _api_fails(done, server)
    finally:
        await asyncio.to_thread(kube_env.api_up)


def test_run_with_an_unloadable_kubeconfig_is_one_line(redis_srv: RedisServer,
                                                       tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    process = DispatcherProcess({"REDIS_URL": redis_srv.url,
                                 "REDIS_PASSWORD": redis_srv.password or "",
                                 "DISPATCHER_KUBECONFIG": str(missing)},
                                tmp_path / "run.log").start()
    assert process.proc is not None
    assert process.proc.wait(60) == EXIT_UNREACHABLE
    line = _one_line(process.logs())
    assert line.startswith(f"cannot reach the Kubernetes API at {missing}: ")
