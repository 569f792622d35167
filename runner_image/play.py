"""Running playbooks through ansible-runner's Python API, safely and observably.

Known ansible-runner traps and how they are avoided here:
- ``passwords``/``extravars``/``ssh_key`` kwargs end up in ``env/`` files (or, with
  ``suppress_env_files``, extravars on the command line): none of them is used. Host
  variables go into an inventory file of public values; the key sits in the run's
  ssh-agent; passwords never reach Ansible (the runner installs its own key first).
- The "starting" status payload and the ``artifacts/*/command`` file carry the child
  environment: secrets were removed from ``os.environ`` before, the status handler logs
  only the status, and the private data dir is deleted after the run.
- ``run()`` from the main thread without ``cancel_callback`` installs signal handlers: it
  runs in a worker thread and always gets a ``cancel_callback``.
- Writable HOME / ANSIBLE_HOME / local temp and a short ControlPath come from the run's
  scratch directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.results import OUTPUT_TAIL_LIMIT, PlayRecap, ResultError

log = logging.getLogger(__name__)

TAIL_CHARS = min(2000, OUTPUT_TAIL_LIMIT)
_LOGGED_EVENTS = {
    "playbook_on_play_start", "playbook_on_task_start", "runner_on_ok", "runner_on_failed",
    "runner_on_unreachable", "runner_on_skipped", "runner_item_on_failed", "playbook_on_stats",
}
_STAT_KEYS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
              "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}


@dataclass
class PlayOutcome:
    """status: successful | failed | unreachable | timeout | canceled."""

    status: str
    recap: PlayRecap = field(default_factory=PlayRecap)
    error: ResultError | None = None
    duration: float = 0.0
    details: dict[str, str | int | float | bool | None] = field(default_factory=dict)


def _tail(text: str | None) -> str:
    return (text or "")[-TAIL_CHARS:]


class _EventSink:
    """Logs events as they happen and keeps what the result needs."""

    def __init__(self, context: dict[str, Any], redact: Callable[[str], str]) -> None:
        self.context = context
        self.redact = redact
        self.failure: ResultError | None = None
        self.unreachable = False
        self.stats: dict[str, Any] = {}
        self.details: dict[str, str | int | float | bool | None] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind in _LOGGED_EVENTS:
            fields = {"ansible_event": kind, "task": data.get("task"), "host": data.get("host"),
                      "play": data.get("play")}
            res = data.get("res") or {}
            if kind in {"runner_on_failed", "runner_on_unreachable"} and isinstance(res, dict):
                fields["module_msg"] = self.redact(str(res.get("msg", ""))[:500])
                fields["ignore_errors"] = bool(data.get("ignore_errors"))
            if kind == "runner_on_ok":
                fields["changed"] = bool(isinstance(res, dict) and res.get("changed"))
            log.info("ansible event", extra={**self.context,
                                             **{k: v for k, v in fields.items() if v is not None}})
        if kind == "runner_on_failed" and not data.get("ignore_errors") and self.failure is None:
            self.failure = self._error("play_failed", data)
        elif kind == "runner_on_unreachable" and self.failure is None:
            self.unreachable = True
            self.failure = self._error("ssh_unreachable", data)
        elif kind == "playbook_on_stats":
            self.stats = data
            artifact = data.get("artifact_data") or {}
            for key, value in artifact.items():
                if isinstance(value, str | int | float | bool) or value is None:
                    self.details[str(key)] = self.redact(value) if isinstance(value, str) else value
        return False  # everything needed is kept here; don't write event files to disk

    def _error(self, kind: str, data: dict[str, Any]) -> ResultError:
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
            output_tail=self.redact(_tail(output)) or None,
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
                        host_vars: dict[str, Any], host: str, *, mitogen: bool = False
                        ) -> PlayEnvironment:
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
    if mitogen:
        # One persistent interpreter on the server for the whole play instead of a fresh
        # Python (and module upload) per task. Its ssh runs with the same ANSIBLE_SSH_ARGS,
        # so it reuses the control master the SSH check opened.
        envvars |= mitogen_envvars()
    return PlayEnvironment(directory, project_dir, inventory, envvars)


def _run_one(env: PlayEnvironment, playbook: Path, timeout: float, sink: _EventSink,
             cancelled: threading.Event, context: dict[str, Any]) -> Any:
    import ansible_runner  # imported here: it is only needed once the play starts

    def on_status(status: dict[str, Any], runner_config: Any = None) -> None:
        # The "starting" payload also has the command and environment: log the status only.
        log.info("ansible status", extra={**context, "ansible_status": status.get("status")})

    return ansible_runner.run(
        private_data_dir=str(env.private_data_dir),
        project_dir=str(env.project_dir),
        playbook=str(playbook),
        inventory=str(env.inventory),
        envvars=env.envvars,
        suppress_env_files=True,
        quiet=True,
        timeout=max(1, int(timeout)),
        settings={"pexpect_timeout": 0.2, "suppress_ansible_output": True},
        event_handler=sink,
        status_handler=on_status,
        cancel_callback=cancelled.is_set,
        ident=playbook.stem,
    )


async def run_playbooks(env: PlayEnvironment, playbooks: list[Path], *, budget: float,
                        cancelled: threading.Event, context: dict[str, Any],
                        redact: Callable[[str], str]) -> PlayOutcome:
    """Run ``playbooks`` in order within one time budget; stop at the first failure."""
    timeout = budget
    started = time.monotonic()
    total = PlayRecap()
    details: dict[str, str | int | float | bool | None] = {}
    for playbook in playbooks:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            return PlayOutcome("timeout", total, _timeout_error(timeout, playbook),
                               time.monotonic() - started, details)
        sink = _EventSink({**context, "playbook": playbook.name}, redact)
        log.info("play starting", extra={**context, "playbook": playbook.name})
        thread_run = asyncio.ensure_future(asyncio.to_thread(
            _run_one, env, playbook, remaining, sink, cancelled, context))
        try:
            result = await asyncio.shield(thread_run)
        except asyncio.CancelledError:
            # Pod deletion: let ansible-runner stop the play, then report it.
            cancelled.set()
            result = await thread_run
        total = _add(total, sink.recap())
        details.update(sink.details)
        status = result.status
        elapsed = time.monotonic() - started
        log.info("play finished", extra={**context, "playbook": playbook.name,
                                         "ansible_status": status, "rc": result.rc,
                                         "duration_seconds": round(elapsed, 3)})
        if status == "successful":
            continue
        if status == "canceled" or cancelled.is_set():
            return PlayOutcome("canceled", total, ResultError(
                kind="cancelled", message=f"the run was cancelled (SIGTERM) during {playbook.name}",
                task=None, host=None), elapsed, details)
        if status == "timeout":
            error = _timeout_error(timeout, playbook)
            return PlayOutcome("timeout", total, error, elapsed, details)
        if sink.failure is None:
            tail = redact(_tail(result.stdout.read() if result.stdout else ""))
            error = ResultError(kind="play_failed",
                                message=f"{playbook.name} failed (rc={result.rc}) before any task "
                                        "failed; see output_tail", return_code=result.rc,
                                output_tail=tail or None)
            return PlayOutcome("failed", total, error, elapsed, details)
        return PlayOutcome("unreachable" if sink.unreachable else "failed", total, sink.failure,
                           elapsed, details)
    return PlayOutcome("successful", total, None, time.monotonic() - started, details)


def _timeout_error(timeout: float, playbook: Path) -> ResultError:
    return ResultError(kind="play_timeout",
                       message=f"{playbook.name} did not finish within PLAY_TIMEOUT={timeout:g}s; "
                               "the play was stopped")


def _add(a: PlayRecap, b: PlayRecap) -> PlayRecap:
    return PlayRecap(**{k: getattr(a, k) + getattr(b, k) for k in PlayRecap.model_fields})
