"""One run for one ProvisionerMessage: from the source of truth to a finished play.

Order of steps (each step's failure ends the run with a specific outcome):
validate inputs -> lock and claim the server -> [provider reinstall] -> SSH check
(record/verify the host key) -> install keys -> play(s). Reporting is done by the caller.
Without a reinstall, the first play's ansible-playbook is started when the SSH check
starts and held at its gate until the keys are installed (play.start_play).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
)

from contracts.messages import Action, ProvisionerMessage
from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.agent import AgentUnavailable, KeyRejected, SshAgent
from runner_image.db import (
    TRANSIENT_DB_ERRORS,
    LockLost,
    MissingCredentialsKey,
    ServerBusy,
    ServerRecord,
    ServerStatus,
    ServerStore,
    WrongCredentialsKey,
)
from runner_image.deadline import DeadlineReached, RunDeadline
from runner_image.deploy_key import PublicKey, install_script, parse_public_key
from runner_image.play import (
    GateUnavailable,
    PlayEnvironment,
    PlayOutcome,
    PlayStatus,
    StartedPlay,
    mitogen_strategy_dir,
    prepare_environment,
    run_playbooks,
    start_play,
)
from runner_image.redaction import Redactor
from runner_image.settings import DatabaseSettings, RunnerSettings
from runner_image.ssh import SshClient, SshError, SshErrorKind, SshResult, SshTarget
from runner_image.warmup import Warmup
from runner_image.workspace import Workspace

log = logging.getLogger(__name__)

# SSH errors another attempt cannot cure.
FINAL_SSH_ERRORS = frozenset({SshErrorKind.HOST_KEY, SshErrorKind.AUTH})
_START_STATUS = {Action.SETUP: ServerStatus.PROVISIONING, Action.RECOVERY: ServerStatus.RECOVERING,
                 Action.REINSTALL: ServerStatus.REINSTALLING}


@dataclass
class RunContext:
    message: ProvisionerMessage
    settings: RunnerSettings
    db_settings: DatabaseSettings
    job_name: str | None
    redact: Redactor
    cancelled: threading.Event
    deadline: RunDeadline
    warmup: Warmup  # what the play and the report import, loaded during the SSH check

    @property
    def request_id(self) -> str:
        assert self.message.request_id is not None
        return self.message.request_id

    @property
    def log_context(self) -> dict[str, Any]:
        return {"server_handle": self.message.server_handle, "request_id": self.request_id,
                "job_name": self.job_name}


def fingerprint(host_key: str) -> str:
    blob = base64.b64decode(host_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class Job:
    def __init__(self, ctx: RunContext, store: ServerStore, workspace: Workspace) -> None:
        self.ctx = ctx
        self.store = store
        self.workspace = workspace
        self.settings = ctx.settings
        self.handle = ctx.message.server_handle
        self.claimed = False
        self.details: out.Details = {}
        self.deadline = ctx.deadline
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

    async def _execute(self) -> out.Outcome:
        problem = self._check_settings()
        if problem:
            return problem
        workspace = self.workspace
        if workspace.problem is not None or workspace.scratch is None:
            return out.rejected(ErrorKind.CONFIG_ERROR, workspace.problem or "no scratch directory")
        locked = await self._lock_and_read()
        if isinstance(locked, out.Outcome):
            return locked
        server, password = locked
        try:
            agent = await workspace.agent()  # started beside the lock and the read
        except KeyRejected as exc:
            return out.rejected(ErrorKind.CONFIG_ERROR, str(exc))
        except AgentUnavailable as exc:
            return out.failed(ErrorKind.RUNNER_ENVIRONMENT,
                              f"{exc}; nothing was changed: retry the request, and check the "
                              "node and the runner image if it repeats", server_status=None)
        action = self.ctx.message.action
        self.claimed = await self.store.claim(self.handle, self.ctx.request_id,
                                              _START_STATUS[action])
        log.info("server claimed", extra={"status": _START_STATUS[action].value,
                                          "action": action.value})
        target = SshTarget(self.handle, server.address, server.ssh_port, server.ssh_user)
        client = SshClient(workspace.scratch, agent.socket, target,
                           self.settings.ssh_connect_timeout)
        workspace.clients.append(client)  # its control master is closed in the wind-up
        return await self._run_steps(server, password, agent, client, workspace.scratch)

    async def _lock_and_read(self) -> tuple[ServerRecord, SecretStr | None] | out.Outcome:
        """The server's row and root password, read with its lock held; or why not."""
        # Lock, then read: a run that waited while another (a reinstall) held the server
        # must see what that run left (its new host key, its status), not what was before.
        wait = self.deadline.cap(self.settings.server_lock_timeout)
        try:
            await self.store.lock(self.handle, wait)
        except ServerBusy as exc:
            if self.deadline.capped(self.settings.server_lock_timeout):
                raise DeadlineReached("the wait for the server's lock",
                                      f"{exc}; {self.deadline.exhausted('the lock wait')}"
                                      ) from None
            return out.failed(ErrorKind.SERVER_BUSY, str(exc), server_status=None)
        server = await self.store.load(self.handle)
        if server is None:
            return out.failed(ErrorKind.UNKNOWN_SERVER,
                              f"server {self.handle} is not in the servers table; register it "
                              "first (python -m runner_image register-server)", server_status=None)
        problem = self._check_server(server)
        if problem:
            return problem
        password: SecretStr | None = None
        if server.has_password:
            try:
                password = await self.store.root_password(self.handle)
            except MissingCredentialsKey as exc:
                return out.rejected(ErrorKind.CONFIG_ERROR, str(exc))
            except WrongCredentialsKey:
                return out.rejected(ErrorKind.CONFIG_ERROR,
                                    f"the root password of {self.handle} cannot be decrypted with "
                                    "CREDENTIALS_KEY; set the key it was stored with")
            except (asyncpg.PostgresError, *TRANSIENT_DB_ERRORS) as exc:
                return out.failed(ErrorKind.DATABASE_UNAVAILABLE,
                                  f"reading the root password of {self.handle} failed: "
                                  f"{type(exc).__name__}: {exc}", server_status=None)
            if password is not None:
                self.ctx.redact.add(password.get_secret_value())
        return server, password

    def _check_settings(self) -> out.Outcome | None:
        """Configuration problems found before anything is touched."""
        if self.settings.play_mitogen:
            try:
                mitogen_strategy_dir()
            except ImportError as exc:
                return out.rejected(ErrorKind.CONFIG_ERROR,
                                    f"PLAY_MITOGEN is true but Mitogen cannot be imported "
                                    f"({exc}); install the runner's dependencies or set "
                                    "PLAY_MITOGEN=false")
        for playbook in self.settings.playbooks_for(self.ctx.message.is_recovery):
            if not playbook.is_file():
                return out.rejected(ErrorKind.CONFIG_ERROR,
                                    f"playbook {playbook} does not exist; check "
                                    "PLAY_PROJECT_DIR / SETUP_PLAYBOOK / RECOVERY_PLAYBOOKS")
        if self.ctx.message.force_reinstall:
            missing = [name for name, value in (
                ("PROVIDER_API_USERNAME", self.settings.provider_api_username),
                ("PROVIDER_API_PASSWORD", self.settings.provider_api_password)) if value is None]
            if missing:
                return out.rejected(ErrorKind.CONFIG_ERROR,
                                    f"force_reinstall needs {' and '.join(missing)}")
        return None

    def _check_server(self, server: ServerRecord) -> out.Outcome | None:
        """Problems with the server's row, read with its lock held."""
        if self.ctx.message.force_reinstall and not server.provider_server_id:
            return out.rejected(ErrorKind.CONFIG_ERROR,
                                f"server {self.handle} has no provider_server_id; "
                                "set it with register-server --provider-server-id")
        return None

    async def _run_steps(self, server: ServerRecord, password: SecretStr | None,
                         agent: SshAgent, client: SshClient, scratch: Path) -> out.Outcome:
        own_key = parse_public_key(agent.public_key)
        own_key = PublicKey(own_key.key_type, own_key.body, "infra-service-provisioner")
        env = self._play_environment(server, client, scratch)
        early: StartedPlay | None = None
        if not self.ctx.message.force_reinstall:
            # ansible-playbook spends about a second starting before its first play: it
            # starts now and waits at its gate while the SSH check and the key installation
            # run; it connects to nothing unless released.
            early = await self._start_play_early(env)
        self.ctx.warmup.start()  # the SSH check (or the reinstall) is the run's longest wait
        try:
            return await self._checked_steps(server, password, client, own_key, env, early)
        finally:
            if early is not None:
                await early.abandon()  # nothing to do once the play ran

    async def _checked_steps(self, server: ServerRecord, password: SecretStr | None,
                             client: SshClient, own_key: PublicKey, env: PlayEnvironment,
                             early: StartedPlay | None) -> out.Outcome:
        if self.ctx.message.force_reinstall:
            failure = await self._reinstall(server, own_key)
            if failure:
                return failure
            client.trust(None)
            failure = await self._wait_for_ssh_after_reinstall(client, password)
        else:
            client.trust(server.host_key)
            failure = await self._ssh_check(client, password, accept_new=server.host_key is None)
        if failure:
            return failure
        self.connect_port = server.ssh_port
        seen = client.seen_host_key()
        if seen and seen != server.host_key:
            await self.store.record_host_key(self.handle, self.ctx.request_id, seen)
            log.info("host key recorded", extra={"fingerprint": fingerprint(seen)})
            self.details["host_key_recorded"] = True
        if seen:
            self.details["host_key_fingerprint"] = fingerprint(seen)
        failure = await self._install_keys(client, server, own_key)
        if failure:
            return failure
        if self.ctx.message.force_reinstall:
            await self.store.set_status(self.handle, self.ctx.request_id,
                                        ServerStatus.PROVISIONING, None)
        return await self._play(server, env, early)

    def _play_environment(self, server: ServerRecord, client: SshClient,
                          scratch: Path) -> PlayEnvironment:
        """The plays' private directory, inventory and environment (public values only)."""
        s = self.settings
        host_vars = {
            **s.play_vars,
            "ansible_host": server.address,
            "ansible_port": server.ssh_port,
            "ansible_user": server.ssh_user,
            "ansible_python_interpreter": s.target_python,
            "infra_server_handle": self.handle,
            "infra_request_id": self.ctx.request_id,
            "infra_action": self.ctx.message.action.value,
            "infra_deploy_key_user": s.deploy_key_user,
            "infra_orchestrator_public_key": s.orchestrator_ssh_public_key,
            # The SSH port contract: the port sshd must keep listening on (the one the run
            # connected on); ssh_port only when a move was explicitly requested.
            "infra_ssh_port": server.ssh_port,
        }
        host_vars.pop("ssh_port", None)
        if s.requested_ssh_port is not None:
            host_vars["ssh_port"] = s.requested_ssh_port
        return prepare_environment(scratch / "pd", s.play_project_dir, client.config_file,
                                   client.control_dir, host_vars, self.handle,
                                   mitogen=s.play_mitogen, passthrough=s.play_env_passthrough)

    async def _start_play_early(self, env: PlayEnvironment) -> StartedPlay | None:
        """The first play's process, gated; None if it cannot start (it is then started,
        and its failure reported, at the play)."""
        first = self.settings.playbooks_for(self.ctx.message.is_recovery)[0]
        left = self.deadline.left()
        try:
            return await start_play(env, first, self.ctx.log_context, self.ctx.redact,
                                    gated=True, gate_timeout=None if left == float("inf")
                                    else left)
        except (OSError, GateUnavailable) as exc:
            log.warning("ansible-playbook could not be started ahead of the SSH check; it "
                        "starts after the key installation", extra={"error": str(exc)})
            return None

    # -- steps ---------------------------------------------------------------------------
    async def _reinstall(self, server: ServerRecord, own_key: PublicKey) -> out.Outcome | None:
        from runner_image.provider import ProviderError, Time4VpsClient

        s = self.settings
        assert s.provider_api_username and s.provider_api_password and server.provider_server_id
        self.ctx.redact.add(s.provider_api_username.get_secret_value(),
                            s.provider_api_password.get_secret_value())
        try:
            async with Time4VpsClient(s.provider_api_url, s.provider_api_username,
                                      s.provider_api_password, s.provider_request_timeout,
                                      deadline=self.deadline) as api:
                task_id = await api.reinstall(server.provider_server_id, s.provider_reinstall_os,
                                              own_key.line)
                self.details["provider_task_id"] = task_id
                log.info("reinstall requested", extra={"task_id": task_id,
                                                       "os": s.provider_reinstall_os})
                await api.wait_for_task(server.provider_server_id, task_id,
                                        interval=s.provider_poll_interval,
                                        limit=s.provider_task_timeout, context={})
        except ProviderError as exc:
            log.error("provider error", extra={"error": exc.message})
            return out.failed(ErrorKind.PROVIDER_ERROR, self.ctx.redact(exc.message))
        return None

    async def _wait_for_ssh_after_reinstall(self, client: SshClient,
                                            password: SecretStr | None) -> out.Outcome | None:
        """Poll until the reinstalled server answers SSH. Policy: every SSH error means "not
        up yet"; a try every PROVIDER_POLL_INTERVAL (0.2-10 s) until REINSTALL_SSH_TIMEOUT or
        the run's deadline, whichever comes first."""
        limit = self.settings.reinstall_ssh_timeout
        by_deadline = self.deadline.capped(limit)
        deadline = time.monotonic() + self.deadline.cap(limit)
        interval = max(0.2, min(self.settings.provider_poll_interval, 10.0))
        phase = "the wait for SSH after the reinstall"

        def no_time_for_another(state: RetryCallState) -> bool:
            return time.monotonic() + interval > deadline

        def announce(state: RetryCallState) -> None:
            log.info("waiting for SSH after reinstall", extra={
                "attempt": state.attempt_number, "error": _ssh_error(state).message})

        polling = AsyncRetrying(stop=no_time_for_another, wait=wait_fixed(interval),
                                retry=retry_if_exception_type(SshError),
                                before_sleep=announce, reraise=True)
        try:
            async for attempt in polling:
                with attempt:
                    client.trust(None)
                    self.deadline.require(phase)
                    result = await client.run(
                        "true", password=password, accept_new=True,
                        limit=min(self.settings.ssh_command_timeout,
                                  max(0.1, deadline - time.monotonic())))
        except SshError as exc:
            log.info("waiting for SSH after reinstall", extra={"error": exc.message})
            if by_deadline:
                raise DeadlineReached(phase, f"{self.deadline.exhausted(phase)}; last "
                                      f"SSH error: {exc.message}") from None
            return out.unreachable(
                ErrorKind.SSH_UNREACHABLE,
                f"SSH did not come back within REINSTALL_SSH_TIMEOUT="
                f"{self.settings.reinstall_ssh_timeout:g}s after the reinstall: {exc.message}")
        self.details["auth_method"] = result.auth_method
        log.info("ssh is back after reinstall", extra={
            "attempt": attempt.retry_state.attempt_number, "auth_method": result.auth_method})
        return None

    async def _ssh_check(self, client: SshClient, password: SecretStr | None,
                         accept_new: bool) -> out.Outcome | None:
        """Policy: SSH_ATTEMPTS tries, pauses of SSH_BACKOFF_BASE doubling; a refused login
        or a changed host key is final at once (repeating a refused login cannot succeed and
        may trip lockouts); no pause that would run past the run's deadline."""
        s = self.settings
        phase = "the SSH check"

        def unless_past_deadline(state: RetryCallState) -> None:
            pause = state.next_action.sleep if state.next_action else 0.0
            if self.deadline.left() <= pause:
                raise DeadlineReached(phase, f"{self.deadline.exhausted(phase)}; last "
                                      f"SSH error: {_ssh_error(state).message}")

        checking = AsyncRetrying(
            stop=stop_after_attempt(s.ssh_attempts),
            wait=wait_exponential(multiplier=s.ssh_backoff_base, exp_base=2, min=0),
            retry=retry_if_exception(lambda exc: isinstance(exc, SshError)
                                     and exc.kind not in FINAL_SSH_ERRORS),
            before_sleep=unless_past_deadline, reraise=True)
        try:
            async for attempt in checking:
                with attempt:
                    self.deadline.require(phase)
                    result = await self._ssh_attempt(client, password, accept_new,
                                                     attempt.retry_state.attempt_number)
        except SshError as exc:
            if exc.kind is SshErrorKind.HOST_KEY:
                return out.failed(ErrorKind.HOST_KEY_MISMATCH, exc.message)
            if exc.kind is SshErrorKind.AUTH:
                return out.unreachable(ErrorKind.SSH_AUTH_FAILED, exc.message)
            return out.unreachable(ErrorKind.SSH_UNREACHABLE,
                                   f"{exc.message} (after {s.ssh_attempts} attempts)")
        self.details["auth_method"] = result.auth_method
        log.info("ssh check passed", extra={"attempt": attempt.retry_state.attempt_number,
                                            "auth_method": result.auth_method})
        return None

    async def _ssh_attempt(self, client: SshClient, password: SecretStr | None,
                           accept_new: bool, attempt: int) -> SshResult:
        try:
            return await client.run("true", password=password, accept_new=accept_new,
                                    limit=self.deadline.cap(self.settings.ssh_command_timeout))
        except SshError as exc:
            log.warning("ssh attempt failed", extra={"attempt": attempt, "kind": exc.kind,
                                                      "error": exc.message})
            raise

    async def _install_keys(self, client: SshClient, server: ServerRecord,
                            own_key: PublicKey) -> out.Outcome | None:
        deploy_key = parse_public_key(self.settings.orchestrator_ssh_public_key)
        deploy_user = self.settings.deploy_key_user
        plan: dict[str, list[PublicKey]] = {server.ssh_user: [own_key]}
        plan.setdefault(deploy_user, []).append(deploy_key)
        sudo = "" if server.ssh_user == "root" else "sudo -n "
        changed = False
        for user, keys in plan.items():
            self.deadline.require("the key installation")
            try:
                result = await client.run(f"{sudo}sh -s -- {user}", stdin=install_script(keys),
                                          limit=self.deadline.cap(self.settings.ssh_command_timeout))
            except SshError as exc:
                return out.failed(ErrorKind.DEPLOY_KEY_FAILED,
                                  f"installing SSH keys for user {user} failed: {exc.message}")
            changed = changed or "authorized_keys changed" in result.stdout
        self.details["deploy_key_changed"] = changed
        log.info("keys installed", extra={"deploy_key_user": deploy_user, "changed": changed})
        return None

    async def _play(self, server: ServerRecord, env: PlayEnvironment,
                    early: StartedPlay | None) -> out.Outcome:
        s = self.settings
        message = self.ctx.message
        await self.ctx.warmup.wait()
        self.deadline.require("the play", needed=1.0)
        by_deadline = self.deadline.capped(s.play_timeout)
        budget = self.deadline.cap(s.play_timeout)
        source = (self.deadline.exhausted("the play") if by_deadline
                  else f"PLAY_TIMEOUT={s.play_timeout:g}s")
        played: PlayOutcome = await run_playbooks(
            env, s.playbooks_for(message.is_recovery), budget=budget, budget_source=source,
            cancelled=self.ctx.cancelled, context=self.ctx.log_context, redact=self.ctx.redact,
            first=early)
        self.details["play_seconds"] = round(played.duration, 3)
        self.details.update(played.details)
        outcome = out.from_play(played)
        if by_deadline and played.status is PlayStatus.TIMEOUT and outcome.error is not None:
            outcome.error.kind = ErrorKind.DEADLINE_EXCEEDED
        outcome.recap = played.recap
        if played.status is PlayStatus.SUCCESSFUL:
            port = connect_port_from(played.stats, server.ssh_port)
            outcome.ssh_port, outcome.ssh_port_changed = port, port != server.ssh_port
            if port != server.ssh_port:
                log.info("the play moved sshd", extra={"ssh_port": port,
                                                       "previous_ssh_port": server.ssh_port})
        return outcome


def connect_port_from(stats: dict[str, Any], current: int) -> int:
    """``infra_ssh.connect_port`` reported by the play (set_stats), else ``current``."""
    report = stats.get("infra_ssh")
    if not isinstance(report, dict):
        return current
    port = report.get("connect_port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        if port is not None:
            log.warning("ignoring an invalid infra_ssh.connect_port from the play",
                        extra={"reported": str(port)[:40]})
        return current
    return port


def _ssh_error(state: RetryCallState) -> SshError:
    """The SSH error the attempt just failed with (only SSH errors are retried)."""
    error = state.outcome.exception() if state.outcome else None
    assert isinstance(error, SshError)
    return error
