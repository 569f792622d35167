"""Running playbooks: ansible-runner prepares, the runner starts and streams, safely.

Known ansible-runner traps and how they are avoided here:
- ``passwords``/``extravars``/``ssh_key`` kwargs end up in ``env/`` files (or, with
  ``suppress_env_files``, extravars on the command line): none of them is used. Host
  variables go into an inventory file of public values; the key sits in the run's
  ssh-agent; passwords never reach Ansible (the runner installs its own key first).
- ``artifacts/*/command`` carries the child environment: the private data dir is deleted
  after the run, and that environment holds no secret (see ``PASSED_ENVIRONMENT``).
- ``ansible_runner.run()`` starts ansible-playbook with pexpect's ``forkpty`` from a worker
  thread: a Python-level fork beside running threads (Python 3.12+ warns that the child
  may deadlock). Its ``subprocess`` mode streams no events and cannot be cancelled. So
  ansible-runner's ``RunnerConfig`` builds the command and environment, and the process is
  started here with asyncio (fork and exec in C), its output decoded into events by
  ansible-runner's ``OutputEventFilter`` as it arrives; timeouts and SIGTERM stop its
  process group.
- Writable HOME / ANSIBLE_HOME / local temp and a short ControlPath come from the run's
  scratch directory.

The first play's process may be started ahead, gated (``start_play(gated=True)``): it
waits before its first play on an inherited pipe until ``StartedPlay.release()``, so
ansible-playbook's start-up overlaps the runner's SSH check (see
``ansible_callbacks/infra_start_gate.py``).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from contracts.results import OUTPUT_TAIL_LIMIT, ErrorKind, PlayRecap, ResultError

log = logging.getLogger(__name__)

TAIL_CHARS = min(2000, OUTPUT_TAIL_LIMIT)
_LOGGED_EVENTS = {
    "playbook_on_play_start", "playbook_on_task_start", "runner_on_ok", "runner_on_failed",
    "runner_on_unreachable", "runner_on_skipped", "runner_item_on_failed", "playbook_on_stats",
}
# set_stats keys that are not scalars and are read by the runner itself (the SSH port
# contract), not copied into the result's details.
STRUCTURED_STATS = frozenset({"infra_ssh"})
_STAT_KEYS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
              "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}


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


def mask_then_cut(text: str | None, redact: Callable[[str], str], limit: int = TAIL_CHARS) -> str:
    """Mask secrets in the whole text first, then keep its end: a secret that straddles the
    cut is masked before any part of it can be kept."""
    return redact(text or "")[-limit:]


class EventSink:
    """Logs events as they happen and keeps what the result needs."""

    def __init__(self, context: dict[str, Any], redact: Callable[[str], str]) -> None:
        self.context = context
        self.redact = redact
        self.failure: ResultError | None = None
        self.unreachable = False
        self.stats: dict[str, Any] = {}
        self.details: dict[str, str | int | float | bool | None] = {}
        self.stats_data: dict[str, Any] = {}
        self.seen: set[str] = set()  # event kinds so far (playbook_on_start: at the gate)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        self.seen.add(kind)
        data = event.get("event_data") or {}
        if kind in _LOGGED_EVENTS:
            fields = {"ansible_event": kind, "task": data.get("task"), "host": data.get("host"),
                      "play": data.get("play")}
            res = data.get("res") or {}
            if kind in {"runner_on_failed", "runner_on_unreachable"} and isinstance(res, dict):
                fields["module_msg"] = self.redact(str(res.get("msg", "")))[:500]
                fields["ignore_errors"] = bool(data.get("ignore_errors"))
            if kind == "runner_on_ok":
                fields["changed"] = bool(isinstance(res, dict) and res.get("changed"))
            log.info("ansible event", extra={**self.context,
                                             **{k: v for k, v in fields.items() if v is not None}})
        if kind == "runner_on_failed" and not data.get("ignore_errors") and self.failure is None:
            self.failure = self._error(ErrorKind.PLAY_FAILED, data)
        elif kind == "runner_on_unreachable" and self.failure is None:
            self.unreachable = True
            self.failure = self._error(ErrorKind.SSH_UNREACHABLE, data)
        elif kind == "playbook_on_stats":
            self.stats = data
            artifact = data.get("artifact_data") or {}
            for key, value in artifact.items():
                if key in STRUCTURED_STATS:
                    self.stats_data[str(key)] = value
                elif isinstance(value, str | int | float | bool) or value is None:
                    self.details[str(key)] = self.redact(value) if isinstance(value, str) else value
        return False  # everything needed is kept here; don't write event files to disk

    def _error(self, kind: ErrorKind, data: dict[str, Any]) -> ResultError:
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        assert isinstance(res, dict)
        parts = [res.get(k) for k in ("module_stderr", "stderr", "module_stdout", "stdout")]
        output = "\n".join(str(p) for p in parts if p)
        rc = res.get("rc")
        message = str(res.get("msg") or "task failed without a message")
        return ResultError(
            kind=kind,
            message=self.redact(
                f"task '{data.get('task')}' failed on {data.get('host')}: {message}"),
            task=data.get("task"),
            host=data.get("host"),
            return_code=rc if isinstance(rc, int) else None,
            output_tail=mask_then_cut(output, self.redact) or None,
        )

    def recap(self) -> PlayRecap:
        counts = {}
        for source, target in _STAT_KEYS.items():
            per_host = self.stats.get(source) or {}
            counts[target] = sum(v for v in per_host.values() if isinstance(v, int))
        return PlayRecap(**counts)


@dataclass
class PlayEnvironment:
    private_data_dir: Path
    project_dir: Path
    inventory: Path
    envvars: dict[str, str]


def mitogen_strategy_dir() -> Path:
    """Where Mitogen's strategy plugins are installed (they ship inside the package)."""
    import ansible_mitogen

    return Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"


def mitogen_envvars() -> dict[str, str]:
    """Ansible settings that make Mitogen's linear strategy the default of a run."""
    return {"ANSIBLE_STRATEGY_PLUGINS": str(mitogen_strategy_dir()),
            "ANSIBLE_STRATEGY": "mitogen_linear"}


def prepare_environment(directory: Path, project_dir: Path, ssh_config: Path, control_dir: Path,
                        host_vars: dict[str, Any], host: str, *, mitogen: bool = False,
                        passthrough: list[str] | None = None) -> PlayEnvironment:
    home = directory / "home"
    local_tmp = directory / "tmp"
    for path in (home, home / ".ansible", local_tmp):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    inventory = directory / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {host: host_vars}}}))
    envvars = {
        # The ansible-playbook of this environment first, not whichever else is on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HOME": str(home),
        "ANSIBLE_HOME": str(home / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(local_tmp),
        # Same private config as the runner's own SSH check: known_hosts, agent, ControlPath.
        "ANSIBLE_SSH_ARGS": f"-F {ssh_config} -o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_SSH_CONTROL_PATH": "%(directory)s/%%C",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
    }
    # Variables the operator chose to hand to the plays (PLAY_ENV_PASSTHROUGH).
    envvars |= {name: os.environ[name] for name in passthrough or () if name in os.environ}
    if mitogen:
        # One persistent interpreter on the server for the whole play instead of a fresh
        # Python (and module upload) per task. Its ssh runs with the same ANSIBLE_SSH_ARGS,
        # so it reuses the control master the SSH check opened.
        envvars |= mitogen_envvars()
    return PlayEnvironment(directory, project_dir, inventory, envvars)


# What the play's processes get from the runner's own environment: locale, PATH and the
# operator's ANSIBLE_* settings. Everything else (the message, database and Redis URLs,
# whatever the pod was given) stays with the runner; secrets were already removed.
PASSED_ENVIRONMENT = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSL_CERT_FILE",
                                "SSL_CERT_DIR"})


def _passed(name: str) -> bool:
    return name in PASSED_ENVIRONMENT or name.startswith(("LC_", "ANSIBLE_"))


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
    from ansible_runner.config.runner import RunnerConfig
    from ansible_runner.runner import Runner
    from ansible_runner.utils import OutputEventFilter

    sink = EventSink({**context, "playbook": playbook.name}, redact)
    config = RunnerConfig(
        private_data_dir=str(env.private_data_dir), project_dir=str(env.project_dir),
        playbook=str(playbook), inventory=str(env.inventory), envvars=env.envvars,
        suppress_env_files=True, quiet=True, ident=playbook.stem,
        suppress_output_file=True, suppress_ansible_output=True)
    config.prepare()
    os.makedirs(os.path.join(config.artifact_dir, "job_events"), mode=0o700, exist_ok=True)
    # The child's environment: ansible-runner's and the runner's settings, plus the few
    # inherited variables the play needs; not the runner's whole environment.
    child_env = {k: v for k, v in config.env.items()
                 if k not in os.environ or k in env.envvars or _passed(k)}
    gate_read, gate_write = -1, None
    if gated:
        gate_read, gate_write = os.pipe()  # both ends close-on-exec; the child gets one
        child_env[GATE_FD_VARIABLE] = str(gate_read)
        if gate_timeout is not None:
            child_env[GATE_TIMEOUT_VARIABLE] = f"{max(0.0, gate_timeout):.3f}"
        child_env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(filter(None, (
            child_env.get("ANSIBLE_CALLBACK_PLUGINS"), str(GATE_PLUGIN_DIR))))
    events = Runner(config, event_handler=sink)
    raw = _BoundedText(MASK_WINDOW)
    stream = OutputEventFilter(raw, events.event_callback, suppress_ansible_output=True)
    log.info("ansible status", extra={**context, "ansible_status": "starting",
                                      "playbook": playbook.name, "gated": gated})
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
    log.info("ansible status", extra={**context, "ansible_status": "running",
                                      "playbook": playbook.name})

    async def pump() -> None:
        assert proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := await proc.stdout.read(65536):
            stream.write(decoder.decode(chunk))
        stream.write(decoder.decode(b"", final=True))
        stream.close()

    return StartedPlay(playbook, sink, proc, asyncio.create_task(pump()), raw, context,
                       gate_write)


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


async def run_playbooks(env: PlayEnvironment, playbooks: list[Path], *, budget: float,
                        budget_source: str, cancelled: threading.Event,
                        context: dict[str, Any], redact: Callable[[str], str],
                        first: StartedPlay | None = None) -> PlayOutcome:
    """Run ``playbooks`` in order within one time budget; stop at the first failure.

    ``budget_source`` names what set the budget (PLAY_TIMEOUT or the run's deadline), for
    the timeout message. ``first``: the first playbook's process, started ahead (gated);
    the budget counts from its release.
    """
    started = time.monotonic()
    total = PlayRecap()
    details: dict[str, str | int | float | bool | None] = {}
    stats: dict[str, Any] = {}
    for playbook in playbooks:
        remaining = budget - (time.monotonic() - started)
        if remaining <= 0 or cancelled.is_set():
            break
        log.info("play starting", extra={**context, "playbook": playbook.name})
        if first is not None and first.playbook == playbook:
            started_play, first = first, None
        else:
            started_play = await start_play(env, playbook, context, redact)
        sink = started_play.sink
        result = await _finish(started_play, remaining)
        total = _add(total, sink.recap())
        details.update(sink.details)
        stats.update(sink.stats_data)
        status = result.status
        elapsed = time.monotonic() - started
        log.info("play finished", extra={**context, "playbook": playbook.name,
                                         "ansible_status": status, "rc": result.rc,
                                         "duration_seconds": round(elapsed, 3)})
        if status == "successful":
            continue
        if status == "canceled" or cancelled.is_set():
            return PlayOutcome(PlayStatus.CANCELED, total, ResultError(
                kind=ErrorKind.CANCELLED,
                message=f"the run was cancelled (SIGTERM) during {playbook.name}",
                task=None, host=None), elapsed, details, stats)
        if status == "timeout":
            return PlayOutcome(PlayStatus.TIMEOUT, total,
                               timeout_error(budget, budget_source, playbook),
                               elapsed, details, stats)
        if sink.failure is None:
            tail = mask_then_cut(result.output, redact)
            error = ResultError(kind=ErrorKind.PLAY_FAILED,
                                message=f"{playbook.name} failed (rc={result.rc}) before any task "
                                        "failed; see output_tail", return_code=result.rc,
                                output_tail=tail or None)
            return PlayOutcome(PlayStatus.FAILED, total, error, elapsed, details, stats)
        return PlayOutcome(PlayStatus.UNREACHABLE if sink.unreachable else PlayStatus.FAILED,
                           total, sink.failure, elapsed, details, stats)
    else:
        return PlayOutcome(PlayStatus.SUCCESSFUL, total, None, time.monotonic() - started,
                           details, stats)
    elapsed = time.monotonic() - started
    if cancelled.is_set():
        return PlayOutcome(PlayStatus.CANCELED, total, ResultError(
            kind=ErrorKind.CANCELLED, message="the run was cancelled (SIGTERM) between plays"),
            elapsed, details, stats)
    return PlayOutcome(PlayStatus.TIMEOUT, total, timeout_error(budget, budget_source, playbook),
                       elapsed, details, stats)


def timeout_error(budget: float, source: str, playbook: Path) -> ResultError:
    return ResultError(kind=ErrorKind.PLAY_TIMEOUT,
                       message=f"{playbook.name} did not finish within the plays' budget of "
                               f"{budget:g}s ({source}); the play was stopped")


def _add(a: PlayRecap, b: PlayRecap) -> PlayRecap:
    return PlayRecap(**{k: getattr(a, k) + getattr(b, k) for k in PlayRecap.model_fields})
