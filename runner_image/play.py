"""Running playbooks: ansible-runner prepares, the runner starts and streams, safely.

Known ansible-runner traps and how they are avoided here:
- ``passwords``/``extravars``/``ssh_key`` kwargs end up in ``env/`` files (or, with
  ``suppress_env_files``, extravars on the command line): none of them is used. Host
  variables go into an inventory file of public values; the key sits in the run's
  ssh-agent; passwords never reach Ansible (the runner installs its own key first).
- ``artifacts/*/command`` carries the child environment: the private data dir is deleted
  after the run, and that environment holds no secret (see ``play_env.PASSED_ENVIRONMENT``).
- ``ansible_runner.run()`` starts ansible-playbook with pexpect's ``forkpty`` from a worker
  thread: a Python-level fork beside running threads (Python 3.12+ warns that the child
  may deadlock). Its ``subprocess`` mode streams no events and cannot be cancelled. So
  ansible-runner's ``RunnerConfig`` builds the command and environment, and the process is
  started here with asyncio (fork and exec in C), its output decoded into events by
  ansible-runner's ``OutputEventFilter`` as it arrives; timeouts and SIGTERM stop its
  process group.
- Writable HOME / ANSIBLE_HOME / local temp and a short ControlPath come from the run's
  scratch directory (``play_env.prepare_environment``).

The first play's process may be started ahead, gated (``start_play(gated=True)``): it
waits before its first play on an inherited pipe until ``StartedPlay.release()``, so
ansible-playbook's start-up overlaps the runner's SSH check (see
``ansible_callbacks/infra_start_gate.py``).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from contracts.results import ErrorKind, Plan, PlayRecap, ResultError
from runner_image.play_env import PlayEnvironment, passed
from runner_image.play_events import TAIL_CHARS, EventSink, mask_then_cut

log = logging.getLogger(__name__)


class PlayStatus(StrEnum):
    """How the plays ended (ansible-runner's words, plus unreachable from the events)."""

    SUCCESSFUL = "successful"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    CANCELED = "canceled"


@dataclass
class PlayOutcome:
    status: PlayStatus
    recap: PlayRecap = field(default_factory=PlayRecap)
    error: ResultError | None = None
    duration: float = 0.0
    details: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # structured set_stats (infra_ssh)
    plan: Plan | None = None  # a plan's verdicts (check mode), whatever the plays' end


class _BoundedText:
    """Keeps the last ``limit`` characters written (ansible-playbook's plain output)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.text = ""

    def write(self, data: str) -> None:
        self.text = (self.text + data)[-self.limit:]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# Masking needs the whole secret in view: output is kept with this much more than the tail,
# masked, and only then cut (longer than any key or password the runner knows).
MASK_WINDOW = TAIL_CHARS + 16384


@dataclass
class _Finished:
    status: str  # successful | failed | timeout | canceled
    rc: int | None
    output: str


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the play's process group (ansible-playbook stops its workers), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), wait)
            return
        except TimeoutError:
            continue


GATE_PLUGIN_DIR = Path(__file__).resolve().parent / "ansible_callbacks"
# The gate's protocol (see ansible_callbacks/infra_start_gate.py, which ansible-playbook
# loads, not the runner).
GATE_FD_VARIABLE = "INFRA_START_GATE_FD"
GATE_TIMEOUT_VARIABLE = "INFRA_START_GATE_TIMEOUT"
GATE_OPEN = b"go\n"
GATE_PLUGIN = GATE_PLUGIN_DIR / "infra_start_gate.py"
# A plan: check mode changes nothing on the server, diff mode shows what would change.
PLAN_ARGUMENTS = "--check --diff"
# The plan's notes plugin (ansible_callbacks/infra_plan_notes.py) writes to this file.
PLAN_NOTES_VARIABLE = "INFRA_PLAN_NOTES"
# What a notes file may hold (one short line per skipped or failed task).
PLAN_NOTES_MAX_BYTES = 4 * 1024 * 1024


class GateUnavailable(Exception):
    """The gate plugin is not installed: an early process would not wait, so none starts."""


@dataclass
class StartedPlay:
    """One ansible-playbook process, started and streaming its events into ``sink``.

    A gated one waits before its first play until ``release()``; ``abandon()`` stops it,
    and before ``release()`` it has connected to nothing.
    """

    playbook: Path
    sink: EventSink
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]
    raw: _BoundedText
    context: dict[str, Any]
    gate: int | None = None  # the pipe's write end while the gate is shut
    started: float = field(default_factory=time.monotonic)

    def release(self) -> None:
        """Let the plays run (a process that already ended is reported by ``finish``)."""
        if self.gate is None:
            return
        try:
            os.write(self.gate, GATE_OPEN)
        except BrokenPipeError:
            pass
        finally:
            os.close(self.gate)
            self.gate = None
        log.info("play released", extra={**self.context, "playbook": self.playbook.name,
                                          "waited_seconds": round(time.monotonic()
                                                                  - self.started, 3)})

    async def abandon(self) -> None:
        """Stop the process if it still runs: closing the gate alone makes a waiting
        ansible-playbook exit, the process group's SIGKILL covers one still starting."""
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            log.info("ansible status", extra={**self.context, "ansible_status": "abandoned",
                                              "playbook": self.playbook.name})
        if not self.pump.done():
            self.pump.cancel()
        # wait() neither raises the pump's error nor swallows a cancellation of this task.
        await asyncio.wait([self.pump])
        error = None if self.pump.cancelled() else self.pump.exception()
        if error is not None:  # only its type: the text may quote the play's output
            log.warning("the abandoned play's output could not be read",
                        extra={**self.context, "error": type(error).__name__})


async def start_play(env: PlayEnvironment, playbook: Path, context: dict[str, Any],
                     redact: Callable[[str], str], *, gated: bool = False,
                     gate_timeout: float | None = None) -> StartedPlay:
    """Start ansible-playbook as ansible-runner would, without its pexpect/thread machinery.

    ansible-runner prepares the command, its environment and the event callback plugin;
    the process is started with ``asyncio.create_subprocess_exec`` (fork and exec happen in
    C in ``_posixsubprocess``: no Python-level fork beside running threads, unlike pexpect's
    ``forkpty``), and its output is decoded into events by ansible-runner's own
    ``OutputEventFilter`` as it arrives, so events are still streamed.

    ``gated``: the process waits before its first play for ``StartedPlay.release()`` (at
    most ``gate_timeout`` seconds), so its start-up can overlap the runner's SSH check.
    """
    if gated and not GATE_PLUGIN.is_file():
        raise GateUnavailable(f"{GATE_PLUGIN} is missing; reinstall the runner package")
    config = _prepared_config(env, playbook)
    sink = EventSink({**context, "playbook": playbook.name}, redact, env.plan)
    raw = _BoundedText(MASK_WINDOW)
    stream = _event_stream(config, sink, raw)
    log.info("ansible status", extra={**context, "ansible_status": "starting",
                                      "playbook": playbook.name, "gated": gated,
                                      "plan": env.plan is not None})
    child_env = _child_environment(config.env, env.envvars)
    if env.plan is not None:
        child_env |= _plan_environment(child_env, env.plan_notes(playbook))
    proc, gate = await _spawn(config, child_env, gate_timeout if gated else None, gated=gated)
    log.info("ansible status", extra={**context, "ansible_status": "running",
                                      "playbook": playbook.name})
    return StartedPlay(playbook, sink, proc, asyncio.create_task(_pump(proc, stream)), raw,
                       context, gate)


def _prepared_config(env: PlayEnvironment, playbook: Path) -> Any:
    """ansible-runner's RunnerConfig for ``playbook``: command, environment, callback plugin."""
    # Imported on first use: the run's warm-up loads ansible-runner in a thread during the
    # SSH check (runner_image/warmup.py), not in the runner's start-up.
    from ansible_runner.config.runner import RunnerConfig

    config = RunnerConfig(
        private_data_dir=str(env.private_data_dir), project_dir=str(env.project_dir),
        playbook=str(playbook), inventory=str(env.inventory), envvars=env.envvars,
        suppress_env_files=True, quiet=True, ident=playbook.stem,
        suppress_output_file=True, suppress_ansible_output=True,
        cmdline=PLAN_ARGUMENTS if env.plan is not None else None)
    config.prepare()
    os.makedirs(os.path.join(config.artifact_dir, "job_events"), mode=0o700, exist_ok=True)
    return config


def _event_stream(config: Any, sink: EventSink, raw: _BoundedText) -> Any:
    """A writable stream that decodes ansible-playbook's output into events for ``sink`` and
    keeps its plain text in ``raw``."""
    # Imported on first use, as in _prepared_config.
    from ansible_runner.runner import Runner
    from ansible_runner.utils import OutputEventFilter

    events = Runner(config, event_handler=sink)
    return OutputEventFilter(raw, events.event_callback, suppress_ansible_output=True)


def _child_environment(prepared: dict[str, str], envvars: dict[str, str]) -> dict[str, str]:
    """ansible-runner's and the runner's settings, plus the few inherited variables the play
    needs; not the runner's whole environment."""
    return {k: v for k, v in prepared.items()
            if k not in os.environ or k in envvars or passed(k)}


async def _spawn(config: Any, child_env: dict[str, str], gate_timeout: float | None, *,
                 gated: bool) -> tuple[asyncio.subprocess.Process, int | None]:
    """The process in a session of its own, and the write end of its gate when ``gated``."""
    gate_read, gate_write = -1, None
    if gated:
        gate_read, gate_write = os.pipe()  # both ends close-on-exec; the child gets one
        child_env = {**child_env, **_gate_environment(child_env, gate_read, gate_timeout)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *config.command, cwd=config.cwd, env=child_env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, pass_fds=(gate_read,) if gated else ())
    except BaseException:
        if gate_write is not None:
            os.close(gate_write)
        raise
    finally:
        if gated:
            os.close(gate_read)
    return proc, gate_write


def _plugin_path(child_env: dict[str, str]) -> dict[str, str]:
    """The callback plugin path with the runner's own plugins on it."""
    paths = [p for p in child_env.get("ANSIBLE_CALLBACK_PLUGINS", "").split(os.pathsep) if p]
    if str(GATE_PLUGIN_DIR) not in paths:
        paths.append(str(GATE_PLUGIN_DIR))
    return {"ANSIBLE_CALLBACK_PLUGINS": os.pathsep.join(paths)}


def _plan_environment(child_env: dict[str, str], notes: Path) -> dict[str, str]:
    """What the plan's notes plugin reads: its file, its plugin path."""
    return {PLAN_NOTES_VARIABLE: str(notes), **_plugin_path(child_env)}


def read_plan_notes(env: PlayEnvironment, playbook: Path) -> None:
    """Hand the notes the plugin wrote on ``playbook`` to the plan (none: nothing to add)."""
    if env.plan is None:
        return
    try:
        with env.plan_notes(playbook).open("rb") as notes:
            text = notes.read(PLAN_NOTES_MAX_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return
    env.plan.add_notes(text.splitlines())


def _gate_environment(child_env: dict[str, str], gate_read: int,
                      gate_timeout: float | None) -> dict[str, str]:
    """What the gate plugin reads: the pipe's descriptor, its timeout, its plugin path."""
    gate = {GATE_FD_VARIABLE: str(gate_read), **_plugin_path(child_env)}
    if gate_timeout is not None:
        gate[GATE_TIMEOUT_VARIABLE] = f"{max(0.0, gate_timeout):.3f}"
    return gate


async def _pump(proc: asyncio.subprocess.Process, stream: Any) -> None:
    """Feed the process's output, decoded as it arrives, to the event stream."""
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := await proc.stdout.read(65536):
        stream.write(decoder.decode(chunk))
    stream.write(decoder.decode(b"", final=True))
    stream.close()


async def _finish(play: StartedPlay, limit: float) -> _Finished:
    """Release the play if it waits, and see it end within ``limit`` seconds."""
    play.release()
    proc = play.proc
    status = "successful"
    try:
        await asyncio.wait_for(asyncio.gather(play.pump, proc.wait()), max(0.1, limit))
    except TimeoutError:
        status = "timeout"
        await _stop(proc)
    except asyncio.CancelledError:
        # Pod deletion (SIGTERM): stop the play, then report it.
        status = "canceled"
        await _stop(proc)
    if status == "successful" and proc.returncode != 0:
        status = "failed"
    log.info("ansible status", extra={**play.context, "ansible_status": status,
                                      "playbook": play.playbook.name})
    return _Finished(status, proc.returncode, play.raw.text)


@dataclass
class _Played:
    """What the plays so far add up to."""

    recap: PlayRecap = field(default_factory=PlayRecap)
    details: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, sink: EventSink) -> None:
        self.recap = _add(self.recap, sink.recap())
        self.details.update(sink.details)
        self.stats.update(sink.stats_data)

    def outcome(self, status: PlayStatus, error: ResultError | None,
                duration: float) -> PlayOutcome:
        return PlayOutcome(status, self.recap, error, duration, self.details, self.stats)


async def run_playbooks(env: PlayEnvironment, playbooks: list[Path], *, budget: float,
                        budget_source: str, cancelled: threading.Event,
                        context: dict[str, Any], redact: Callable[[str], str],
                        first: StartedPlay | None = None) -> PlayOutcome:
    """Run ``playbooks`` in order within one time budget; stop at the first failure.

    ``budget_source`` names what set the budget (PLAY_TIMEOUT or the run's deadline), for
    the timeout message. ``first``: the first playbook's process, started ahead (gated);
    the budget counts from its release. For a plan (``env.plan``) the outcome carries it.
    """
    outcome = await _run_all(env, playbooks, budget=budget, budget_source=budget_source,
                             cancelled=cancelled, context=context, redact=redact, first=first)
    if env.plan is not None:
        outcome.plan = env.plan.plan()
    return outcome


async def _run_all(env: PlayEnvironment, playbooks: list[Path], *, budget: float,
                   budget_source: str, cancelled: threading.Event, context: dict[str, Any],
                   redact: Callable[[str], str], first: StartedPlay | None) -> PlayOutcome:
    started = time.monotonic()
    played = _Played()
    for playbook in playbooks:
        remaining = budget - (time.monotonic() - started)
        if remaining <= 0 or cancelled.is_set():
            return _stopped_between(played, playbook, budget, budget_source, cancelled,
                                    time.monotonic() - started)
        log.info("play starting", extra={**context, "playbook": playbook.name})
        if first is not None and first.playbook == playbook:
            started_play, first = first, None
        else:
            started_play = await start_play(env, playbook, context, redact)
        result = await _finish(started_play, remaining)
        played.add(started_play.sink)
        read_plan_notes(env, playbook)
        elapsed = time.monotonic() - started
        log.info("play finished", extra={**context, "playbook": playbook.name,
                                         "ansible_status": result.status, "rc": result.rc,
                                         "duration_seconds": round(elapsed, 3)})
        if result.status != "successful":
            error = _play_error(result, started_play.sink, playbook, budget, budget_source,
                                cancelled, redact)
            return played.outcome(error[0], error[1], elapsed)
    return played.outcome(PlayStatus.SUCCESSFUL, None, time.monotonic() - started)


def _play_error(result: _Finished, sink: EventSink, playbook: Path, budget: float,
                budget_source: str, cancelled: threading.Event,
                redact: Callable[[str], str]) -> tuple[PlayStatus, ResultError]:
    """How a playbook that did not succeed ended, and the result's error for it."""
    if result.status == "canceled" or cancelled.is_set():
        return PlayStatus.CANCELED, ResultError(
            kind=ErrorKind.CANCELLED,
            message=f"the run was cancelled (SIGTERM) during {playbook.name}",
            task=None, host=None)
    if result.status == "timeout":
        return PlayStatus.TIMEOUT, timeout_error(budget, budget_source, playbook)
    if sink.failure is None:
        tail = mask_then_cut(result.output, redact)
        return PlayStatus.FAILED, ResultError(
            kind=ErrorKind.PLAY_FAILED,
            message=f"{playbook.name} failed (rc={result.rc}) before any task failed; see "
                    "output_tail", return_code=result.rc, output_tail=tail or None)
    return (PlayStatus.UNREACHABLE if sink.unreachable else PlayStatus.FAILED), sink.failure


def _stopped_between(played: _Played, playbook: Path, budget: float, budget_source: str,
                     cancelled: threading.Event, elapsed: float) -> PlayOutcome:
    """The outcome when SIGTERM or the budget stops the run before ``playbook`` starts."""
    if cancelled.is_set():
        return played.outcome(PlayStatus.CANCELED, ResultError(
            kind=ErrorKind.CANCELLED, message="the run was cancelled (SIGTERM) between plays"),
            elapsed)
    return played.outcome(PlayStatus.TIMEOUT, timeout_error(budget, budget_source, playbook),
                          elapsed)


def timeout_error(budget: float, source: str, playbook: Path) -> ResultError:
    return ResultError(kind=ErrorKind.PLAY_TIMEOUT,
                       message=f"{playbook.name} did not finish within the plays' budget of "
                               f"{budget:g}s ({source}); the play was stopped")


def _add(a: PlayRecap, b: PlayRecap) -> PlayRecap:
    return PlayRecap(**{k: getattr(a, k) + getattr(b, k) for k in PlayRecap.model_fields})
