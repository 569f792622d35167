"""The run's step sequence (runner_image.job.Job) with fakes at its edges: which steps run,
in which order, and the result kind a failure at each step ends the run with.

The steps themselves are tested in their modules (test_inputs, test_ssh_check,
test_reinstall, test_authorized_keys, test_play_env, test_play); the whole run on real
hosts in test_run_on_host.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from contracts.results import (
    ErrorKind,
    Plan,
    PlannedTask,
    PlanVerdict,
    PlayRecap,
    ResultError,
    ResultStatus,
)
from runner_image import outcome as out
from runner_image.agent import AgentUnavailable, KeyRejected
from runner_image.db import ServerRecord, ServerStatus
from runner_image.deadline import DeadlineReached
from runner_image.job import OWN_KEY_COMMENT, Job
from runner_image.play import PlayOutcome, PlayStatus
from runner_image.settings import RunnerSettings
from runner_image.ssh import fingerprint
from tests.support.keys import Keypair
from tests.support.runner_fakes import (
    FakeSteps,
    FakeStore,
    FakeWorkspace,
    context,
    ok,
    server_record,
    unit_settings,
)

pytestmark = pytest.mark.unit

RECOVERY = ["recover.yml", "verify.yml"]


@pytest.fixture
def settings(tmp_path: Path, provisioner_key: Keypair,
             orchestrator_key: Keypair) -> RunnerSettings:
    return unit_settings(tmp_path / "project", provisioner_key, orchestrator_key,
                         ("setup.yml", *RECOVERY), recovery_playbooks=RECOVERY,
                         provider_api_username=SecretStr("t4v-user"),
                         provider_api_password=SecretStr("t4v-password"))


class Run:
    """A Job over fakes, and what each fake saw."""

    def __init__(self, tmp_path: Path, settings: RunnerSettings, key: Keypair, *,
                 server: ServerRecord | None = None, store: FakeStore | None = None,
                 steps: FakeSteps | None = None, workspace: FakeWorkspace | None = None,
                 **flags: Any) -> None:
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        self.store = store or FakeStore(server or server_record())
        self.steps = steps or FakeSteps()
        self.workspace = workspace or FakeWorkspace(scratch, key.public)
        self.job = Job(context(settings, **flags), self.store, self.workspace,
                       self.steps)

    async def execute(self) -> out.Outcome:
        return await self.job.execute()

    def store_calls(self) -> list[str]:
        return [name for name, _ in self.store.calls]


@pytest.fixture
def run(tmp_path: Path, settings: RunnerSettings, provisioner_key: Keypair) -> Any:
    def make(**kwargs: Any) -> Run:
        return Run(tmp_path, settings, provisioner_key, **kwargs)
    return make


def kind(outcome: out.Outcome) -> ErrorKind | None:
    return outcome.error.kind if outcome.error else None


async def test_a_setup_checks_ssh_installs_keys_then_plays(run: Any,
                                                          orchestrator_key: Keypair) -> None:
    steps = FakeSteps(seen_host_key=orchestrator_key.public)  # any real key body will do
    r = run(steps=steps)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.SUCCEEDED and outcome.server_status is ServerStatus.READY
    assert steps.names() == ["start_play", "check_ssh", "install_keys", "play"]
    assert ("check_ssh", True) in steps.calls  # no key recorded yet: the first one is taken
    assert ("install_keys", ("root", OWN_KEY_COMMENT)) in steps.calls
    assert steps.calls[-1] == ("play", (["setup.yml"], steps.early[0]))
    assert steps.early[0].abandoned  # the early process is always let go at the end
    assert r.store_calls() == ["lock", "claim", "record_host_key"]
    assert r.store.calls[1] == ("claim", ServerStatus.PROVISIONING)
    seen = " ".join(orchestrator_key.public.split()[:2])
    assert outcome.details["host_key_fingerprint"] == fingerprint(seen)
    assert outcome.details["host_key_recorded"] is True
    assert outcome.details["auth_method"] == "publickey"
    assert outcome.details["deploy_key_changed"] is True
    assert (outcome.ssh_port, outcome.ssh_port_changed) == (22, False)


async def test_a_plan_plays_without_claim_keys_or_host_key(run: Any,
                                                           orchestrator_key: Keypair) -> None:
    plan = Plan(tasks=[PlannedTask(task="Write x", verdict=PlanVerdict.WOULD_CHANGE)],
                would_change=1)
    steps = FakeSteps(seen_host_key=orchestrator_key.public,
                      played=PlayOutcome(PlayStatus.SUCCESSFUL, PlayRecap(ok=2), plan=plan))
    r = run(steps=steps, plan=True, is_recovery=True)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.PLANNED and outcome.server_status is None
    assert outcome.plan == plan and outcome.error is None
    assert steps.names() == ["start_play", "check_ssh", "play"]  # no install_keys
    assert steps.calls[-1] == ("play", (RECOVERY, steps.early[0]))
    assert r.store_calls() == ["lock"]  # the row is read under the lock, never written
    assert not r.job.claimed
    assert "host_key_recorded" not in outcome.details
    assert "deploy_key_changed" not in outcome.details


async def test_a_plan_that_fails_leaves_the_row_alone(run: Any) -> None:
    failure = ResultError(kind=ErrorKind.SSH_UNREACHABLE, message="gone")
    steps = FakeSteps(played=PlayOutcome(PlayStatus.UNREACHABLE, error=failure))
    r = run(steps=steps, plan=True)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.UNREACHABLE and outcome.server_status is None
    assert r.store_calls() == ["lock"]


async def test_a_plan_needs_the_key_it_does_not_install(run: Any) -> None:
    steps = FakeSteps(checked=ok(auth_method="password"))
    r = run(steps=steps, plan=True)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.REJECTED and kind(outcome) is ErrorKind.SSH_AUTH_FAILED
    assert "run a setup first" in outcome.reason
    assert steps.names() == ["start_play", "check_ssh"]
    assert r.store_calls() == ["lock"]


async def test_a_known_host_key_is_trusted_and_not_recorded_again(
        run: Any, orchestrator_key: Keypair) -> None:
    seen = " ".join(orchestrator_key.public.split()[:2])
    steps = FakeSteps(seen_host_key=seen)
    r = run(steps=steps, server=server_record(host_key=seen))
    outcome = await r.execute()
    assert outcome.status is ResultStatus.SUCCEEDED
    assert ("check_ssh", False) in steps.calls  # strict checking against the recorded key
    assert "record_host_key" not in r.store_calls()
    assert "host_key_recorded" not in outcome.details


async def test_unreachable_ends_before_any_key_or_play(run: Any) -> None:
    steps = FakeSteps(checked=out.unreachable(ErrorKind.SSH_UNREACHABLE, "no answer"))
    r = run(steps=steps)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.UNREACHABLE and kind(outcome) is ErrorKind.SSH_UNREACHABLE
    assert outcome.server_status is ServerStatus.UNREACHABLE
    assert steps.names() == ["start_play", "check_ssh"]
    assert steps.early[0].abandoned
    assert outcome.ssh_port is None  # sshd was never reached


async def test_a_forced_reinstall_comes_first_and_no_play_starts_early(run: Any) -> None:
    steps = FakeSteps()
    r = run(steps=steps, force_reinstall=True)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.SUCCEEDED
    assert steps.names() == ["reinstall", "wait_for_ssh", "install_keys", "play"]
    assert steps.calls[0] == ("reinstall", "4242")
    assert steps.calls[1] == ("wait_for_ssh", "")  # no host key trusted after a reinstall
    assert steps.calls[-1] == ("play", (["setup.yml"], None))
    assert r.store.calls[1] == ("claim", ServerStatus.REINSTALLING)
    # Back to PROVISIONING once the new system answers and has the keys, before the play.
    assert r.store.calls[-1] == ("set_status", ServerStatus.PROVISIONING)
    assert outcome.details["provider_task_id"] == "task-7"


async def test_a_recovery_plays_the_recovery_playbooks(run: Any) -> None:
    steps = FakeSteps()
    r = run(steps=steps, is_recovery=True)
    outcome = await r.execute()
    assert outcome.status is ResultStatus.SUCCEEDED
    assert steps.calls[0] == ("start_play", "recover.yml")
    assert steps.calls[-1] == ("play", (RECOVERY, steps.early[0]))
    assert r.store.calls[1] == ("claim", ServerStatus.RECOVERING)


async def test_the_port_the_play_moved_sshd_to_is_reported(run: Any) -> None:
    played = PlayOutcome(PlayStatus.SUCCESSFUL, stats={"infra_ssh": {"connect_port": 2222}})
    outcome = await run(steps=FakeSteps(played=played)).execute()
    assert (outcome.ssh_port, outcome.ssh_port_changed) == (2222, True)


@pytest.mark.parametrize(("steps", "flags", "expected", "ran"), [
    (FakeSteps(task_id=None, reinstalled=out.failed(ErrorKind.PROVIDER_ERROR, "wronglogin")),
     {"force_reinstall": True}, (ResultStatus.FAILED, ErrorKind.PROVIDER_ERROR),
     ["reinstall"]),
    (FakeSteps(comeback=out.unreachable(ErrorKind.SSH_UNREACHABLE, "not back")),
     {"force_reinstall": True}, (ResultStatus.UNREACHABLE, ErrorKind.SSH_UNREACHABLE),
     ["reinstall", "wait_for_ssh"]),
    (FakeSteps(checked=out.unreachable(ErrorKind.SSH_AUTH_FAILED, "refused")),
     {}, (ResultStatus.UNREACHABLE, ErrorKind.SSH_AUTH_FAILED), ["start_play", "check_ssh"]),
    (FakeSteps(checked=out.failed(ErrorKind.HOST_KEY_MISMATCH, "changed")),
     {}, (ResultStatus.FAILED, ErrorKind.HOST_KEY_MISMATCH), ["start_play", "check_ssh"]),
    (FakeSteps(keys=out.failed(ErrorKind.DEPLOY_KEY_FAILED, "symlink")),
     {}, (ResultStatus.FAILED, ErrorKind.DEPLOY_KEY_FAILED),
     ["start_play", "check_ssh", "install_keys"]),
    (FakeSteps(played=PlayOutcome(PlayStatus.FAILED, error=out.failed(
        ErrorKind.PLAY_FAILED, "task x failed").error)),
     {}, (ResultStatus.FAILED, ErrorKind.PLAY_FAILED),
     ["start_play", "check_ssh", "install_keys", "play"]),
    (FakeSteps(played=PlayOutcome(PlayStatus.UNREACHABLE, error=out.failed(
        ErrorKind.SSH_UNREACHABLE, "gone mid-play").error)),
     {}, (ResultStatus.UNREACHABLE, ErrorKind.SSH_UNREACHABLE),
     ["start_play", "check_ssh", "install_keys", "play"]),
], ids=["provider", "no-comeback", "auth", "host-key", "keys", "play", "play-unreachable"])
async def test_a_failing_step_ends_the_run_with_its_kind(
        run: Any, steps: FakeSteps, flags: dict[str, bool],
        expected: tuple[ResultStatus, ErrorKind], ran: list[str]) -> None:
    outcome = await run(steps=steps, **flags).execute()
    assert (outcome.status, kind(outcome)) == expected
    assert steps.names() == ran


async def test_the_deadline_in_any_step_ends_in_deadline_exceeded(run: Any) -> None:
    steps = FakeSteps(raises={"install_keys": DeadlineReached(
        "the key installation", "the run's deadline is reached")})
    outcome = await run(steps=steps).execute()
    assert outcome.status is ResultStatus.TIMED_OUT and kind(outcome) is ErrorKind.DEADLINE_EXCEEDED
    assert outcome.server_status is ServerStatus.FAILED  # claimed: its status is written
    assert "play" not in steps.names()
    assert steps.early[0].abandoned


async def test_the_reinstall_task_is_reported_however_the_wait_ends(run: Any) -> None:
    steps = FakeSteps(raises={"reinstall": DeadlineReached(
        "the wait for provider task task-7", "the run's deadline is reached")})
    outcome = await run(steps=steps, force_reinstall=True).execute()
    assert kind(outcome) is ErrorKind.DEADLINE_EXCEEDED
    assert outcome.details["provider_task_id"] == "task-7"
    failed = out.failed(ErrorKind.PROVIDER_ERROR, "Invalid task ID")
    outcome = await run(steps=FakeSteps(reinstalled=failed), force_reinstall=True).execute()
    assert kind(outcome) is ErrorKind.PROVIDER_ERROR
    assert outcome.details["provider_task_id"] == "task-7"


async def test_sigterm_during_a_step_is_a_cancelled_run(run: Any) -> None:
    steps = FakeSteps(raises={"check_ssh": asyncio.CancelledError()})
    outcome = await run(steps=steps).execute()
    assert kind(outcome) is ErrorKind.CANCELLED and outcome.server_status is ServerStatus.FAILED
    assert steps.early[0].abandoned


async def test_a_missing_playbook_is_rejected_before_the_lock(run: Any,
                                                             settings: RunnerSettings) -> None:
    (settings.play_project_dir / "setup.yml").unlink()
    r = run()
    outcome = await r.execute()
    assert (outcome.status, kind(outcome)) == (ResultStatus.REJECTED, ErrorKind.CONFIG_ERROR)
    assert "setup.yml does not exist" in outcome.error.message
    assert r.store.calls == [] and r.steps.calls == []


async def test_without_a_scratch_directory_nothing_is_touched(
        run: Any, provisioner_key: Keypair) -> None:
    r = run(workspace=FakeWorkspace(None, provisioner_key.public,
                                    problem="RUNNER_SCRATCH_DIR is not a writable directory"))
    outcome = await r.execute()
    assert kind(outcome) is ErrorKind.CONFIG_ERROR and "RUNNER_SCRATCH_DIR" in str(outcome.reason)
    assert r.store.calls == []


@pytest.mark.parametrize(("store", "expected"), [
    (FakeStore(server_record(), busy=True), ErrorKind.SERVER_BUSY),
    (FakeStore(None), ErrorKind.UNKNOWN_SERVER),
], ids=["busy", "unknown"])
async def test_a_server_that_cannot_be_had_is_never_claimed(run: Any, store: FakeStore,
                                                            expected: ErrorKind) -> None:
    r = run(store=store)
    outcome = await r.execute()
    assert kind(outcome) is expected and outcome.server_status is None
    assert "claim" not in r.store_calls() and r.steps.calls == []
    assert not r.job.claimed


@pytest.mark.parametrize(("error", "expected"), [
    (KeyRejected("ssh-add refused SSH_PRIVATE_KEY"), (ResultStatus.REJECTED,
                                                      ErrorKind.CONFIG_ERROR)),
    (AgentUnavailable("ssh-agent did not start"), (ResultStatus.FAILED,
                                                   ErrorKind.RUNNER_ENVIRONMENT)),
], ids=["key-rejected", "agent-unavailable"])
async def test_an_agent_problem_ends_the_run_before_the_claim(
        run: Any, provisioner_key: Keypair, tmp_path: Path, error: Exception,
        expected: tuple[ResultStatus, ErrorKind]) -> None:
    (tmp_path / "scratch").mkdir()
    r = run(workspace=FakeWorkspace(tmp_path / "scratch", provisioner_key.public,
                                    agent_error=error))
    outcome = await r.execute()
    assert (outcome.status, kind(outcome)) == expected and outcome.server_status is None
    assert r.store_calls() == ["lock"]
