"""One run for one ProvisionerMessage: the sequence of its steps, from the source of truth to
a finished play.

Order of steps (each step's failure ends the run with a specific outcome):
validate inputs -> lock and read the server -> claim it -> [provider reinstall, wait for
SSH] or the SSH check -> record the host key -> install keys -> play(s). Reporting is done
by the caller. Without a reinstall, the first play's ansible-playbook is started when the
SSH check starts and held at its gate until the keys are installed (play.start_play).

A plan (the message's ``plan``) takes the lock and reads the server, then only checks SSH
and runs the play(s) in check mode: no claim, no host key recorded, no key installed, no
provider, so the server's row is never written.

The steps themselves live in their modules (inputs, ssh_check, reinstall,
authorized_keys, play_env, play), reached through ``Steps`` (runner_image/steps.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from contracts.messages import Action
from contracts.results import ErrorKind
from contracts.run_history import Phase
from runner_image import outcome as out
from runner_image.agent import AgentUnavailable, KeyRejected, SshAgent
from runner_image.context import RunContext
from runner_image.db import LockLost, ServerRecord, ServerStatus, ServerStore
from runner_image.deadline import DeadlineReached
from runner_image.deploy_key import PublicKey, parse_public_key
from runner_image.inputs import check_settings, lock_and_read
from runner_image.plan import PlanCollector
from runner_image.play import PlayOutcome, PlayStatus, StartedPlay
from runner_image.play_env import (
    PlayEnvironment,
    connect_port_from,
    host_vars,
    prepare_environment,
)
from runner_image.ssh import SshClient, SshResult, SshTarget, fingerprint
from runner_image.steps import RunSteps
from runner_image.workspace import Workspace

log = logging.getLogger(__name__)

_START_STATUS = {Action.SETUP: ServerStatus.PROVISIONING, Action.RECOVERY: ServerStatus.RECOVERING,
                 Action.REINSTALL: ServerStatus.REINSTALLING}
OWN_KEY_COMMENT = "infra-service-provisioner"
# How sshd says a login used the password: a plan installs no key, and the play logs in with
# the runner's key only.
PASSWORD_METHODS = frozenset({"password", "keyboard-interactive"})


class Steps(Protocol):
    """The steps the sequence calls (runner_image/steps.py binds them to the run)."""

    async def reinstall(self, server_id: str, own_key: PublicKey,
                        requested: Callable[[str], None]) -> out.Outcome | None: ...

    async def wait_for_ssh(self, client: SshClient,
                           password: SecretStr | None) -> SshResult | out.Outcome: ...

    async def check_ssh(self, client: SshClient, password: SecretStr | None, *,
                        accept_new: bool) -> SshResult | out.Outcome: ...

    async def install_keys(self, client: SshClient, login_user: str,
                           own_key: PublicKey) -> bool | out.Outcome: ...

    async def start_play(self, env: PlayEnvironment, playbook: Path) -> StartedPlay | None: ...

    async def play(self, env: PlayEnvironment, playbooks: list[Path],
                   first: StartedPlay | None) -> PlayOutcome: ...


class Job:
    def __init__(self, ctx: RunContext, store: ServerStore, workspace: Workspace,
                 steps: Steps | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.workspace = workspace
        self.steps: Steps = steps or RunSteps(ctx)
        self.settings = ctx.settings
        self.message = ctx.message
        self.handle = ctx.message.server_handle
        self.claimed = False
        self.details: out.Details = {}
        self.connect_port: int | None = None  # the port the run reached sshd on

    # -- entry point -------------------------------------------------------------------
    async def execute(self) -> out.Outcome:
        try:
            outcome = await self._execute()
        except asyncio.CancelledError:
            outcome = self.cancelled("before the play started")
        except DeadlineReached as exc:
            log.error("run deadline reached", extra={"phase": exc.phase})
            outcome = out.deadline_exceeded(exc.message)
            if not self.claimed:
                outcome.server_status = None
        except LockLost as exc:
            outcome = out.failed(ErrorKind.LOCK_LOST, str(exc), server_status=None)
        outcome.details = {**self.details, **outcome.details}
        if outcome.ssh_port is None and self.connect_port is not None:
            outcome.ssh_port, outcome.ssh_port_changed = self.connect_port, False
        return outcome

    def cancelled(self, where: str) -> out.Outcome:
        """The outcome when SIGTERM stops the run ``where`` (also used by the caller when it
        cancels the run before it started)."""
        return out.cancelled(where, claimed=self.claimed)

    # -- the sequence ------------------------------------------------------------------
    async def _execute(self) -> out.Outcome:
        problem = check_settings(self.settings, self.message)
        if problem:
            return problem
        workspace = self.workspace
        if workspace.problem is not None or workspace.scratch is None:
            return out.rejected(ErrorKind.CONFIG_ERROR, workspace.problem or "no scratch directory")
        with self.ctx.trace.timing(Phase.LOCK):
            locked = await lock_and_read(self.store, self.message,
                                         self.settings.server_lock_timeout, self.ctx.deadline,
                                         self.ctx.redact)
        if isinstance(locked, out.Outcome):
            return locked
        server, password = locked
        self.ctx.trace.ssh_port_before = server.ssh_port
        agent = await self._agent()
        if isinstance(agent, out.Outcome):
            return agent
        action = self.message.action
        if self.message.plan:
            # The lock is held (a plan waits for a run in progress), the row is not written.
            log.info("planning: the server is not claimed", extra={"action": action.value})
        else:
            self.claimed = await self.store.claim(self.handle, self.ctx.request_id,
                                                  _START_STATUS[action])
            log.info("server claimed", extra={"status": _START_STATUS[action].value,
                                              "action": action.value})
        target = SshTarget(self.handle, server.address, server.ssh_port, server.ssh_user)
        client = SshClient(workspace.scratch, agent.socket, target,
                           self.settings.ssh_connect_timeout)
        workspace.clients.append(client)  # its control master is closed in the wind-up
        return await self._run_steps(server, password, agent, client, workspace.scratch)

    async def _agent(self) -> SshAgent | out.Outcome:
        """The run's ssh-agent, started beside the lock and the read."""
        try:
            return await self.workspace.agent()
        except KeyRejected as exc:
            return out.rejected(ErrorKind.CONFIG_ERROR, str(exc))
        except AgentUnavailable as exc:
            return out.failed(ErrorKind.RUNNER_ENVIRONMENT,
                              f"{exc}; nothing was changed: retry the request, and check the "
                              "node and the runner image if it repeats", server_status=None)

    async def _run_steps(self, server: ServerRecord, password: SecretStr | None,
                         agent: SshAgent, client: SshClient, scratch: Path) -> out.Outcome:
        own_key = parse_public_key(agent.public_key)
        own_key = PublicKey(own_key.key_type, own_key.body, OWN_KEY_COMMENT)
        s = self.settings
        env = prepare_environment(scratch / "pd", s.play_project_dir, client.config_file,
                                  client.control_dir, host_vars(s, server, self.message),
                                  self.handle, mitogen=s.play_mitogen,
                                  passthrough=s.play_env_passthrough,
                                  plan=PlanCollector(self.ctx.redact) if self.message.plan
                                  else None)
        early: StartedPlay | None = None
        if not self.message.force_reinstall:
            # ansible-playbook spends about a second starting before its first play: it
            # starts now and waits at its gate while the SSH check and the key installation
            # run; it connects to nothing unless released.
            early = await self.steps.start_play(env, self._playbooks()[0])
        self.ctx.warmup.start()  # the SSH check (or the reinstall) is the run's longest wait
        try:
            return await self._reached_steps(server, password, client, own_key, env, early)
        finally:
            if early is not None:
                await early.abandon()  # nothing to do once the play ran

    async def _reached_steps(self, server: ServerRecord, password: SecretStr | None,
                             client: SshClient, own_key: PublicKey, env: PlayEnvironment,
                             early: StartedPlay | None) -> out.Outcome:
        reached = await self._reach(server, password, client, own_key)
        if isinstance(reached, out.Outcome):
            return reached
        self.details["auth_method"] = reached.auth_method
        self.connect_port = server.ssh_port
        await self._record_host_key(client, server)
        if self.message.plan:
            return await self._plan(env, early, reached)
        changed = await self.steps.install_keys(client, server.ssh_user, own_key)
        if isinstance(changed, out.Outcome):
            return changed
        self.details["deploy_key_changed"] = changed
        if self.message.force_reinstall:
            await self.store.set_status(self.handle, self.ctx.request_id,
                                        ServerStatus.PROVISIONING, None)
        return await self._play(server, env, early)

    async def _reach(self, server: ServerRecord, password: SecretStr | None,
                     client: SshClient, own_key: PublicKey) -> SshResult | out.Outcome:
        """SSH that answers and logs in: after a reinstall when one is asked for, else the
        SSH check against the recorded host key (any key on first contact)."""
        if not self.message.force_reinstall:
            client.trust(server.host_key)
            return await self.steps.check_ssh(client, password,
                                              accept_new=server.host_key is None)
        assert server.provider_server_id is not None  # checked by inputs.check_server
        failure = await self.steps.reinstall(server.provider_server_id, own_key,
                                             self._reinstall_requested)
        if failure:
            return failure
        client.trust(None)
        return await self.steps.wait_for_ssh(client, password)

    def _reinstall_requested(self, task_id: str) -> None:
        """The provider's task, kept for the result however the run ends."""
        self.details["provider_task_id"] = task_id

    async def _record_host_key(self, client: SshClient, server: ServerRecord) -> None:
        seen = client.seen_host_key()
        if seen and seen != server.host_key and not self.message.plan:
            await self.store.record_host_key(self.handle, self.ctx.request_id, seen)
            log.info("host key recorded", extra={"fingerprint": fingerprint(seen)})
            self.details["host_key_recorded"] = True
        if seen:
            self.details["host_key_fingerprint"] = fingerprint(seen)

    async def _play(self, server: ServerRecord, env: PlayEnvironment,
                    early: StartedPlay | None) -> out.Outcome:
        played = await self.steps.play(env, self._playbooks(), early)
        self.details["play_seconds"] = round(played.duration, 3)
        self.details.update(played.details)
        outcome = out.from_play(played)
        outcome.recap = played.recap
        if played.status is PlayStatus.SUCCESSFUL:
            port = connect_port_from(played.stats, server.ssh_port)
            outcome.ssh_port, outcome.ssh_port_changed = port, port != server.ssh_port
            if port != server.ssh_port:
                log.info("the play moved sshd", extra={"ssh_port": port,
                                                       "previous_ssh_port": server.ssh_port})
        return outcome

    async def _plan(self, env: PlayEnvironment, early: StartedPlay | None,
                    reached: SshResult) -> out.Outcome:
        """The play(s) in check and diff mode, without keys: the runner's key must already
        let it in."""
        if reached.auth_method in PASSWORD_METHODS:
            return out.rejected(ErrorKind.SSH_AUTH_FAILED, (
                f"a plan installs no key and the server let the runner in with "
                f"{reached.auth_method} only: run a setup first (it installs the provisioner's "
                "key), then plan"))
        played = await self.steps.play(env, self._playbooks(), early)
        self.details["play_seconds"] = round(played.duration, 3)
        if played.status is PlayStatus.SUCCESSFUL and played.plan is not None:
            log.info("plan ready", extra={"would_change": played.plan.would_change,
                                          "unknown": played.plan.unknown})
            return out.planned(played.recap, played.plan)
        outcome = out.from_play(played)
        outcome.recap = played.recap
        outcome.server_status = None  # a plan leaves the row alone, however it ends
        return outcome

    def _playbooks(self) -> list[Path]:
        return self.settings.playbooks_for(self.message.is_recovery)
