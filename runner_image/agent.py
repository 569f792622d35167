"""An ssh-agent private to one run: the provisioner's private key never touches disk.

The key reaches ``ssh-add`` on its standard input; ssh and Ansible find the agent through
``IdentityAgent`` in the run's private ssh config, so no key path or secret is ever on a
command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from pydantic import SecretStr


class AgentError(Exception):
    pass


class SshAgent:
    def __init__(self, process: asyncio.subprocess.Process, socket: Path, public_key: str) -> None:
        self.process = process
        self.socket = socket
        self.public_key = public_key

    @classmethod
    async def start(cls, socket: Path, private_key: SecretStr) -> SshAgent:
        process = await asyncio.create_subprocess_exec(
            "ssh-agent", "-D", "-a", str(socket),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            for _ in range(1000):
                if os.path.exists(socket):  # noqa: ASYNC240 - a stat, no I/O wait
                    break
                if process.returncode is not None:
                    raise AgentError(f"ssh-agent exited with {process.returncode}")
                await asyncio.sleep(0.002)  # it appears within a few ms
            else:
                raise AgentError("ssh-agent did not create its socket within 2s")
            env = {**os.environ, "SSH_AUTH_SOCK": str(socket)}
            add = await asyncio.create_subprocess_exec(
                "ssh-add", "-q", "-", env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await add.communicate(private_key.get_secret_value().encode())
            if add.returncode != 0:
                raise AgentError(
                    "SSH_PRIVATE_KEY could not be loaded (is it an unencrypted OpenSSH private "
                    f"key?): {err.decode(errors='replace').strip()[:200]}"
                )
            listing = await asyncio.create_subprocess_exec(
                "ssh-add", "-L", env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await listing.communicate()
            public_key = out.decode().strip().splitlines()[0] if out.strip() else ""
            if not public_key:
                raise AgentError("ssh-agent holds no key after loading SSH_PRIVATE_KEY")
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
