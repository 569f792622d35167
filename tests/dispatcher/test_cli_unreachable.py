"""The SRE command line when Redis or the Kubernetes API does not answer: one line naming the
URL tried and what to check, exit code 3, never a traceback (and never the password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dispatcher.support import DispatcherProcess
from tests.dispatcher.test_cli import cli
from tests.k8s_emulator import running_emulator, write_kubeconfig
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


def test_check_names_each_dependency(redis_srv: RedisServer, tmp_path: Path) -> None:
    with running_emulator() as emu:
        good = write_kubeconfig(tmp_path / "good", emu.url, "infra")
        done = cli(redis_srv, "check", DISPATCHER_KUBECONFIG=str(good),
                   DISPATCHER_NAMESPACE="infra")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines() == [
            f"ok: Redis at {redis_srv.url} answers",
            f"ok: Kubernetes API at {emu.url} answers (Jobs in infra)"]
    dead_api = f"http://127.0.0.1:{free_port()}"
    bad = write_kubeconfig(tmp_path / "bad", dead_api, "infra")
    done = cli(redis_srv, "check", DISPATCHER_KUBECONFIG=str(bad),
               DISPATCHER_API_TIMEOUT_SECONDS="3")
    assert done.returncode == EXIT_UNREACHABLE
    assert "Traceback" not in done.stderr
    ok, failed = done.stdout.splitlines()
    assert ok.startswith("ok: Redis")
    assert failed.startswith(f"FAIL: cannot reach the Kubernetes API at {dead_api}: ")
    assert "check DISPATCHER_KUBECONFIG" in failed


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
