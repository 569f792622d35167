"""An ssh-agent private to one run: the provisioner's private key never touches disk.

The key reaches ``ssh-add`` on its standard input; ssh and Ansible find the agent through
``IdentityAgent`` in the run's private ssh config, so no key path or secret is ever on a
command line.

The agent is ready when it prints its ``SSH_AUTH_SOCK=`` line: ssh-agent writes it after
``listen()``. Its socket file is no such sign: it appears at ``bind()``, and a connection
made before ``listen()`` is refused (on a busy node that gap is long enough to hit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from pydantic import SecretStr

READY_PREFIX = b"SSH_AUTH_SOCK="
START_TIMEOUT = 10.0  # seconds for the agent to listen; it takes milliseconds when healthy
# ssh-add's exit codes: 1 the key was refused, 2 the agent could not be reached.
_SSH_ADD_NO_AGENT = 2


class AgentError(Exception):
    """The run has no agent holding its key."""


class KeyRejected(AgentError):
    """SSH_PRIVATE_KEY is not a key the agent accepts: the operator's configuration."""


class AgentUnavailable(AgentError):
    """The agent could not be started or reached: the pod's environment, not the key."""


class SshAgent:
    def __init__(self, process: asyncio.subprocess.Process, socket: Path, public_key: str) -> None:
        self.process = process
        self.socket = socket
        self.public_key = public_key

    @classmethod
    async def start(cls, socket: Path, private_key: SecretStr) -> SshAgent:
        log_path = socket.with_suffix(".log")
        with log_path.open("wb") as log_file:  # the child keeps its own descriptor
            process = await asyncio.create_subprocess_exec(
                "ssh-agent", "-D", "-a", str(socket),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        try:
            await _wait_until_listening(process, log_path)
            env = {**os.environ, "SSH_AUTH_SOCK": str(socket)}
            add = await asyncio.create_subprocess_exec(
                "ssh-add", "-q", "-", env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await add.communicate(private_key.get_secret_value().encode())
            said = err.decode(errors="replace").strip()[:200]
            if add.returncode == _SSH_ADD_NO_AGENT:
                raise AgentUnavailable(f"ssh-add could not reach the run's ssh-agent: {said}")
            if add.returncode != 0:
                raise KeyRejected(
                    "SSH_PRIVATE_KEY could not be loaded (is it an unencrypted OpenSSH private "
                    f"key?): {said}"
                )
            listing = await asyncio.create_subprocess_exec(
                "ssh-add", "-L", env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await listing.communicate()
            public_key = out.decode().strip().splitlines()[0] if out.strip() else ""
            if not public_key:
                raise AgentUnavailable("ssh-agent holds no key after loading SSH_PRIVATE_KEY "
                                       f"(ssh-add -L exited with {listing.returncode})")
        except BaseException:
            await cls(process, socket, "").stop()
            raise
        return cls(process, socket, public_key)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


async def _wait_until_listening(process: asyncio.subprocess.Process, log_path: Path) -> None:
    """Return once the agent has printed its ready line; AgentUnavailable if it exits first
    or stays silent for START_TIMEOUT."""
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while line := await process.stdout.readline():
                if line.startswith(READY_PREFIX):
                    return
            await process.wait()
    except TimeoutError:
        raise AgentUnavailable(f"ssh-agent did not listen within {START_TIMEOUT:g}s") from None
    said = log_path.read_text(errors="replace").strip()[:200]  # noqa: ASYNC240 - a small local file
    raise AgentUnavailable(f"ssh-agent exited with {process.returncode} before listening"
                           + (f": {said}" if said else ""))
