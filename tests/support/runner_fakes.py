"""Fakes at the runner's edges for its unit tests: the server store, the workspace and its
agent, an SSH client with scripted answers, and the run's steps as seen by ``Job``.

Each records what it was asked, so a test can say which steps ran, in which order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from contracts.messages import ProvisionerMessage
from runner_image import outcome as out
from runner_image.context import RunContext
from runner_image.db import ServerBusy, ServerRecord, ServerStatus
from runner_image.deadline import RunDeadline
from runner_image.deploy_key import PublicKey
from runner_image.play import PlayOutcome, PlayStatus
from runner_image.play_env import PlayEnvironment
from runner_image.redaction import Redactor
from runner_image.settings import DatabaseSettings, RunnerSettings
from runner_image.ssh import SshClient, SshError, SshResult
from runner_image.warmup import Warmup
from tests.support.keys import Keypair

NO_DEADLINE = RunDeadline(None, 0.0, None)


def unit_settings(project: Path, provisioner: Keypair, orchestrator: Keypair,
                  playbooks: tuple[str, ...] = ("setup.yml",), **changes: Any
                  ) -> RunnerSettings:
    """Runner settings for a unit test: the test's keys, a play project holding
    ``playbooks`` (each a play with no task), no mitogen; ``changes`` override."""
    project.mkdir(exist_ok=True)
    for name in playbooks:
        (project / name).write_text("- hosts: all\n")
    fields: dict[str, Any] = {"play_project_dir": project, "setup_playbook": "setup.yml",
                              "play_mitogen": False, **changes}
    return RunnerSettings(ssh_private_key=SecretStr(provisioner.private),
                          orchestrator_ssh_public_key=orchestrator.public, **fields)


def server_record(handle: str = "web-1", **changes: Any) -> ServerRecord:
    row: dict[str, Any] = {
        "handle": handle, "provider": "time4vps", "provider_server_id": "4242",
        "address": "192.0.2.10", "ssh_port": 22, "ssh_user": "root", "has_password": False,
        "host_key": None, "status": ServerStatus.NEW, "status_reason": None,
        "last_request_id": None}
    return ServerRecord(**{**row, **changes})


def context(settings: RunnerSettings, *, deadline: RunDeadline = NO_DEADLINE,
            **flags: Any) -> RunContext:
    message = ProvisionerMessage(server_handle="web-1", request_id="req-1", **flags)
    return RunContext(message, settings, DatabaseSettings(database_url="postgresql://db/x"),
                      "provision-web-1", Redactor(), threading.Event(), deadline, Warmup())


@dataclass
class FakeStore:
    """ServerStore: one server row (or none), a lock that is free unless ``busy``."""

    server: ServerRecord | None
    busy: bool = False
    password: SecretStr | None = None
    password_error: Exception | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def lock(self, handle: str, wait: float) -> None:
        self.calls.append(("lock", wait))
        if self.busy:
            raise ServerBusy(f"server {handle} is locked by another run")

    async def load(self, handle: str) -> ServerRecord | None:
        return self.server

    async def root_password(self, handle: str) -> SecretStr | None:
        if self.password_error is not None:
            raise self.password_error
        return self.password

    async def claim(self, handle: str, request_id: str, status: ServerStatus) -> bool:
        self.calls.append(("claim", status))
        return True

    async def set_status(self, handle: str, request_id: str, status: ServerStatus,
                         reason: str | None) -> bool:
        self.calls.append(("set_status", status))
        return True

    async def record_host_key(self, handle: str, request_id: str, host_key: str) -> bool:
        self.calls.append(("record_host_key", host_key))
        return True


@dataclass
class FakeAgent:
    socket: Path
    public_key: str


class FakeWorkspace:
    """Workspace: a real scratch directory, an agent that is started or fails with
    ``agent_error``."""

    def __init__(self, scratch: Path | None, public_key: str,
                 agent_error: Exception | None = None, problem: str | None = None) -> None:
        self.scratch = scratch
        self.problem = problem
        self.clients: list[SshClient] = []
        self._public_key = public_key
        self._agent_error = agent_error

    async def agent(self) -> FakeAgent:
        if self._agent_error is not None:
            raise self._agent_error
        assert self.scratch is not None
        return FakeAgent(self.scratch / "agent.sock", self._public_key)


class FakeSshClient:
    """SshClient.run with scripted answers: each call takes the next one (an SshResult,
    or an SshError that is raised); the last answer repeats."""

    def __init__(self, *answers: SshResult | SshError) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []
        self.trusted: list[str | None] = []

    def trust(self, host_key: str | None) -> None:
        self.trusted.append(host_key)

    async def run(self, remote: str, *, stdin: str | None = None,
                  password: SecretStr | None = None, accept_new: bool = False,
                  limit: float = 60.0) -> SshResult:
        self.calls.append({"remote": remote, "stdin": stdin, "password": password,
                           "accept_new": accept_new, "limit": limit})
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, SshError):
            raise answer
        return answer


def ok(stdout: str = "", auth_method: str | None = "publickey") -> SshResult:
    return SshResult(stdout, "", auth_method)


@dataclass
class FakeStartedPlay:
    playbook: Path
    abandoned: bool = False

    async def abandon(self) -> None:
        self.abandoned = True


@dataclass
class FakeSteps:
    """The run's steps as Job sees them: each answers what the test set (by default the
    step succeeds) and is recorded by name, with its arguments, in ``calls``."""

    task_id: str | None = "task-7"  # None: the provider refused the request itself
    reinstalled: out.Outcome | None = None
    comeback: SshResult | out.Outcome = field(default_factory=ok)
    checked: SshResult | out.Outcome = field(default_factory=ok)
    keys: bool | out.Outcome = True
    played: PlayOutcome = field(default_factory=lambda: PlayOutcome(PlayStatus.SUCCESSFUL))
    seen_host_key: str | None = None  # what the SSH check leaves in known_hosts
    raises: dict[str, BaseException] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    early: list[FakeStartedPlay] = field(default_factory=list)

    def _step(self, name: str, argument: Any) -> None:
        self.calls.append((name, argument))
        if name in self.raises:
            raise self.raises[name]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _saw(self, client: SshClient) -> None:
        if self.seen_host_key is not None:
            client.known_hosts.write_text(f"{client.target.alias} {self.seen_host_key}\n")

    async def reinstall(self, server_id: str, own_key: PublicKey,
                        requested: Callable[[str], None]) -> out.Outcome | None:
        if self.task_id is not None:
            requested(self.task_id)
        self._step("reinstall", server_id)
        return self.reinstalled

    async def wait_for_ssh(self, client: SshClient,
                           password: SecretStr | None) -> SshResult | out.Outcome:
        self._step("wait_for_ssh", client.known_hosts.read_text())
        self._saw(client)
        return self.comeback

    async def check_ssh(self, client: SshClient, password: SecretStr | None, *,
                        accept_new: bool) -> SshResult | out.Outcome:
        self._step("check_ssh", accept_new)
        self._saw(client)
        return self.checked

    async def install_keys(self, client: SshClient, login_user: str,
                           own_key: PublicKey) -> bool | out.Outcome:
        self._step("install_keys", (login_user, own_key.comment))
        return self.keys

    async def start_play(self, env: PlayEnvironment, playbook: Path) -> FakeStartedPlay:
        self._step("start_play", playbook.name)
        self.early.append(FakeStartedPlay(playbook))
        return self.early[-1]

    async def play(self, env: PlayEnvironment, playbooks: list[Path],
                   first: Any) -> PlayOutcome:
        self._step("play", ([p.name for p in playbooks], first))
        return self.played
