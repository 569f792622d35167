"""The steps of one run bound to its settings, deadline and redactor: what ``Job`` calls.

Each method hands its step module (ssh_check, reinstall, authorized_keys, play) the
settings that bound it, so the sequence in job.py reads as steps, and its tests replace
this class with fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.authorized_keys import install_keys
from runner_image.context import RunContext
from runner_image.deploy_key import PublicKey, parse_public_key
from runner_image.play import (
    GateUnavailable,
    PlayOutcome,
    PlayStatus,
    StartedPlay,
    run_playbooks,
    start_play,
)
from runner_image.play_env import PlayEnvironment
from runner_image.reinstall import ProviderAccess, reinstall
from runner_image.ssh import SshClient, SshResult
from runner_image.ssh_check import CheckPolicy, ComebackPolicy, check_ssh, wait_for_ssh

log = logging.getLogger(__name__)


class RunSteps:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.deadline = ctx.deadline

    async def reinstall(self, server_id: str, own_key: PublicKey,
                        requested: Callable[[str], None]) -> out.Outcome | None:
        s = self.settings
        assert s.provider_api_username and s.provider_api_password  # checked by inputs.py
        access = ProviderAccess(s.provider_api_url, s.provider_api_username,
                                s.provider_api_password, s.provider_request_timeout,
                                s.provider_poll_interval, s.provider_task_timeout,
                                s.provider_reinstall_os)
        return await reinstall(access, server_id, own_key.line, deadline=self.deadline,
                               redact=self.ctx.redact, requested=requested)

    async def wait_for_ssh(self, client: SshClient,
                           password: SecretStr | None) -> SshResult | out.Outcome:
        s = self.settings
        policy = ComebackPolicy(s.reinstall_ssh_timeout, s.provider_poll_interval,
                                s.ssh_command_timeout)
        return await wait_for_ssh(client, password, policy=policy, deadline=self.deadline)

    async def check_ssh(self, client: SshClient, password: SecretStr | None, *,
                        accept_new: bool) -> SshResult | out.Outcome:
        s = self.settings
        policy = CheckPolicy(s.ssh_attempts, s.ssh_backoff_base, s.ssh_command_timeout)
        return await check_ssh(client, password, accept_new=accept_new, policy=policy,
                               deadline=self.deadline)

    async def install_keys(self, client: SshClient, login_user: str,
                           own_key: PublicKey) -> bool | out.Outcome:
        s = self.settings
        return await install_keys(client, login_user, own_key, s.deploy_key_user,
                                  parse_public_key(s.orchestrator_ssh_public_key),
                                  command_timeout=s.ssh_command_timeout,
                                  deadline=self.deadline)

    async def start_play(self, env: PlayEnvironment, playbook: Path) -> StartedPlay | None:
        """The first play's process, gated; None if it cannot start (it is then started,
        and its failure reported, at the play)."""
        left = self.deadline.left()
        try:
            return await start_play(env, playbook, self.ctx.log_context, self.ctx.redact,
                                    gated=True,
                                    gate_timeout=None if left == float("inf") else left)
        except (OSError, GateUnavailable) as exc:
            log.warning("ansible-playbook could not be started ahead of the SSH check; it "
                        "starts after the key installation", extra={"error": str(exc)})
            return None

    async def play(self, env: PlayEnvironment, playbooks: list[Path],
                   first: StartedPlay | None) -> PlayOutcome:
        """The plays within PLAY_TIMEOUT or what is left of the run's deadline, whichever is
        shorter; a timeout the deadline set is a ``deadline_exceeded``."""
        s, deadline = self.settings, self.deadline
        await self.ctx.warmup.wait()
        deadline.require("the play", needed=1.0)
        by_deadline = deadline.capped(s.play_timeout)
        source = (deadline.exhausted("the play") if by_deadline
                  else f"PLAY_TIMEOUT={s.play_timeout:g}s")
        played = await run_playbooks(
            env, playbooks, budget=deadline.cap(s.play_timeout), budget_source=source,
            cancelled=self.ctx.cancelled, context=self.ctx.log_context, redact=self.ctx.redact,
            first=first)
        if by_deadline and played.status is PlayStatus.TIMEOUT and played.error is not None:
            played.error.kind = ErrorKind.DEADLINE_EXCEEDED
        return played
