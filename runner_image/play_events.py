"""What a play's events leave: log lines as they happen, and what the result keeps.

ansible-runner decodes ansible-playbook's output into events and hands each to the sink;
the sink logs the interesting ones, keeps the first failure (masked, its output cut to a
bounded tail after masking), the recap counts and the scalar ``set_stats`` values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from contracts.results import OUTPUT_TAIL_LIMIT, ErrorKind, PlayRecap, ResultError
from runner_image.plan import PlanCollector

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


def mask_then_cut(text: str | None, redact: Callable[[str], str], limit: int = TAIL_CHARS) -> str:
    """Mask secrets in the whole text first, then keep its end: a secret that straddles the
    cut is masked before any part of it can be kept."""
    return redact(text or "")[-limit:]


class EventSink:
    """Logs events as they happen and keeps what the result needs."""

    def __init__(self, context: dict[str, Any], redact: Callable[[str], str],
                 plan: PlanCollector | None = None) -> None:
        self.context = context
        self.redact = redact
        self.plan = plan  # a plan's events are judged there too
        self.failure: ResultError | None = None
        self.unreachable = False
        self.stats: dict[str, Any] = {}
        self.details: dict[str, str | int | float | bool | None] = {}
        self.stats_data: dict[str, Any] = {}
        self.seen: set[str] = set()  # event kinds so far (playbook_on_start: at the gate)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        self.seen.add(kind)
        if self.plan is not None:
            self.plan(event)
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
