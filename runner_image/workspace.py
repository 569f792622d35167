"""The run's scratch directory and ssh-agent: set up before the database is reached, wound
up at the end whatever happened.

Neither needs anything from the server's row, and the agent takes three processes (~30 ms)
to start: begun first, it is ready by the time the server is locked and read. The wind-up
(SSH control masters closed, the agent stopped, processes the play left behind stopped, the
directory removed) runs beside the report, which needs none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import SecretStr

from runner_image.agent import AgentError, SshAgent
from runner_image.reaping import stop_leftovers
from runner_image.ssh import SshClient

log = logging.getLogger(__name__)


class Workspace:
    def __init__(self, scratch_root: Path, private_key: SecretStr) -> None:
        self.scratch: Path | None = None
        self.problem: str | None = None  # why there is no scratch directory (and no agent)
        self._agent_start: asyncio.Future[SshAgent] | None = None
        self._winding_up: asyncio.Future[None] | None = None
        self.clients: list[SshClient] = []  # their control masters are closed at the end
        try:
            self.scratch = Path(tempfile.mkdtemp(prefix="r", dir=scratch_root))
        except OSError as exc:
            self.problem = f"RUNNER_SCRATCH_DIR is not a writable directory: {exc.strerror}"
            return
        self._agent_start = asyncio.ensure_future(
            SshAgent.start(self.scratch / "agent.sock", private_key))

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, scratch_root: Path, private_key: SecretStr
                     ) -> AsyncIterator[Workspace]:
        workspace = cls(scratch_root, private_key)
        try:
            yield workspace
        finally:
            await workspace.wind_up()

    async def agent(self) -> SshAgent:
        """The started agent; AgentError if SSH_PRIVATE_KEY could not be loaded."""
        assert self._agent_start is not None, "no agent without a scratch directory"
        return await asyncio.shield(self._agent_start)

    def wind_up_soon(self) -> None:
        """Begin the wind-up in the background (the run is done with the workspace)."""
        if self._winding_up is None:
            self._winding_up = asyncio.ensure_future(self._wind_up())

    async def wind_up(self) -> None:
        self.wind_up_soon()
        assert self._winding_up is not None
        await self._winding_up

    async def _wind_up(self) -> None:
        for client in self.clients:
            await client.close()
        if self._agent_start is not None:
            agent = await _settle(self._agent_start)
            if agent is not None:
                await agent.stop()
        if self.scratch is None:
            return
        stopped = await stop_leftovers()
        if stopped:
            log.warning("stopped processes the play left behind", extra={"processes": stopped})
        shutil.rmtree(self.scratch, ignore_errors=True)


async def _settle(start: asyncio.Future[SshAgent]) -> SshAgent | None:
    """The agent if it started (to be stopped by the caller); a start still running is
    cancelled (SshAgent.start then stops its own process)."""
    start.cancel()
    try:
        return await start
    except (asyncio.CancelledError, AgentError):
        return None
