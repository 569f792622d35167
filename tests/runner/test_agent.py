"""The run's ssh-agent against real ssh-agent processes, including a slow one.

A busy node can pause ssh-agent between ``bind()`` (its socket file appears) and ``listen()``
(connections are accepted). A run that took the file as the sign of readiness had ssh-add
refused and reported a valid key as ``config_error``. A small preloaded library pauses
every ``listen()`` of the real ssh-agent to reproduce that order on demand (the agent
stays one ordinary process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from runner_image import agent as agent_module
from runner_image.agent import AgentUnavailable, KeyRejected, SshAgent
from tests.support.keys import Keypair, make_keypair

REAL_AGENT = shutil.which("ssh-agent")


def fake_agent(directory: Path, script: str) -> None:
    """An ``ssh-agent`` on PATH that runs ``script`` (sh) instead of the real one."""
    path = directory / "ssh-agent"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Keypair:
    return make_keypair(tmp_path_factory.mktemp("agentkeys"), "agent-test")


LATE_LISTEN_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
int listen(int fd, int backlog) {
    int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
    const char *us = getenv("LATE_LISTEN_US");
    usleep(us ? (useconds_t)atol(us) : 400000);
    return real(fd, backlog);
}
"""


def late_listen_agent(directory: Path, delay_us: int = 400_000) -> None:
    """The real ssh-agent, with ``delay_us`` between its bind() and its listen()."""
    source = directory / "late_listen.c"
    source.write_text(LATE_LISTEN_C)
    library = directory / "late_listen.so"
    built = subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"gcc (installed by scripts/install-deps.sh): {built.stderr}"
    # A copy, since Debian installs ssh-agent setgid and the loader ignores LD_PRELOAD there.
    agent = directory / "ssh-agent.real"
    assert REAL_AGENT is not None
    shutil.copy(REAL_AGENT, agent)
    fake_agent(directory, f"LATE_LISTEN_US={delay_us} LD_PRELOAD={library} exec {agent} \"$@\"")


def test_the_late_listen_is_reproduced(bin_dir: Path, tmp_path: Path) -> None:
    """The condition itself: the socket file exists and ssh-add is refused (exit 2)."""
    late_listen_agent(bin_dir, delay_us=1_000_000)
    sock = tmp_path / "a.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        assert sock.exists()
        refused = subprocess.run(["ssh-add", "-l"], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                                 capture_output=True, text=True, check=False)
        assert refused.returncode == 2, refused
        assert "Connection refused" in refused.stderr
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_agent_that_listens_late_is_waited_for(bin_dir: Path, tmp_path: Path,
                                                        key: Keypair) -> None:
    late_listen_agent(bin_dir)
    agent = await SshAgent.start(tmp_path / "agent.sock", SecretStr(key.private))
    try:
        assert agent.public_key.split()[:2] == key.public.split()[:2]
        listed = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True, check=False,
                                env={**os.environ, "SSH_AUTH_SOCK": str(agent.socket)})
        assert key.body in listed.stdout, listed
    finally:
        await agent.stop()
    assert agent.process.returncode is not None and not agent.socket.exists()


async def test_a_key_the_agent_refuses_is_the_operators(tmp_path: Path) -> None:
    bad = SecretStr("-----BEGIN OPENSSH " "PRIVATE KEY-----\ngarbage\n"
                    "-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(KeyRejected, match="SSH_PRIVATE_KEY could not be loaded") as caught:
        await SshAgent.start(tmp_path / "agent.sock", bad)
    assert "garbage" not in str(caught.value)
    assert not (tmp_path / "agent.sock").exists()


async def test_an_agent_that_exits_says_why(bin_dir: Path, tmp_path: Path, key: Keypair) -> None:
    fake_agent(bin_dir, 'echo "agent: out of file descriptors" >&2; exit 3')
    with pytest.raises(AgentUnavailable) as caught:
        await SshAgent.start(tmp_path / "agent.sock", SecretStr(key.private))
    assert "exited with 3 before listening" in str(caught.value)
    assert "out of file descriptors" in str(caught.value)


async def test_an_agent_that_never_listens_times_out(bin_dir: Path, tmp_path: Path, key: Keypair,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake_agent(bin_dir, "exec sleep 30")
    monkeypatch.setattr(agent_module, "START_TIMEOUT", 0.5)
    with pytest.raises(AgentUnavailable, match=r"did not listen within 0\.5s"):
        await SshAgent.start(tmp_path / "agent.sock", SecretStr(key.private))


async def test_an_unreachable_agent_is_not_the_keys_fault(bin_dir: Path, tmp_path: Path,
                                                          key: Keypair) -> None:
    """An agent that says it listens but is gone: ssh-add's exit 2, not a key problem."""
    fake_agent(bin_dir, 'echo "SSH_AUTH_SOCK=$3; export SSH_AUTH_SOCK;"; exec sleep 30')
    with pytest.raises(AgentUnavailable, match="could not reach the run's ssh-agent"):
        await SshAgent.start(tmp_path / "agent.sock", SecretStr(key.private))
