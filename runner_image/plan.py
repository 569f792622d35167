"""A plan: what a run would change, read from a play run in check and diff mode.

Each task-level event of the play is judged once:
- ``runner_on_ok`` with ``changed``: ``would_change``, with the diff Ansible shows; but a
  change the module could not check (a command that "would have run if not in check mode")
  is ``unknown``;
- ``runner_on_ok`` of a loop with an item skipped because of check mode: ``unknown``;
- ``runner_on_failed`` (failures are ignored in check mode by the plays, so the play goes on):
  ``unknown``, since in check mode a task usually fails because an earlier one did not really
  run (a package from a repository not added yet);
- ``runner_on_skipped``: ``unknown`` when check mode caused the skip;
- a handler skipped by its condition, or reporting no change: ``unknown``, since it acts on
  the server as the changes that notified it would leave it, and in check mode it sees the
  server as it is.
The events say neither why a task was skipped nor whether it is a handler: the play's
callback plugin (ansible_callbacks/infra_plan_notes.py) notes both, with the handlers a
task check mode cannot tell would notify (resolved through ``listen`` topics), which are
``unknown`` too.

Anything else is not a change. The parser takes whatever the events hold: a field of the
wrong type is ignored, never an exception, and the plan is bounded (PLAN_TASK_LIMIT tasks,
PLAN_DIFF_LIMIT characters per diff, secrets masked before anything is cut).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from contracts.results import (
    PLAN_DIFF_LIMIT,
    PLAN_TASK_LIMIT,
    PLAN_TEXT_LIMIT,
    Plan,
    PlannedTask,
    PlanVerdict,
)

# Distinct tasks remembered at most (a play has far fewer); beyond, tasks are counted in no
# verdict, so a runaway play cannot grow the runner's memory.
MAX_TRACKED_TASKS = 10_000
# What one side of a file diff may hold before it is compared (after masking): difflib's
# cost grows with the lines it compares.
DIFF_SIDE_CHARS = 65_536
DIFF_SIDE_LINES = 2_000
DIFFS_PER_TASK = 20  # diffs of a loop's items read at most
CUT_MARK = "\n[cut]"
# Events the plugin may add a note to (for an ok one, only a handler's without a change).
NOTED_EVENTS = frozenset({"runner_on_ok", "runner_on_failed", "runner_on_skipped"})
CHECK_MODE_WORDS = "check mode"

Key = tuple[str | None, str]  # (role, task)


@dataclass
class _Entry:
    order: float
    verdict: PlanVerdict
    reason: str | None = None
    diff: str | None = None


def _unknown_because(note: dict[str, Any]) -> str | None:
    """Why a task the plugin noted cannot be told; None for a failure (its event made it
    unknown already, with the module's message) and for a task skipped by its own
    condition, which says it would not run."""
    outcome = note.get("outcome")
    if outcome == "skipped" and note.get("check_mode_skip") is True:
        return "skipped: it cannot run in check mode"
    if note.get("handler") is not True:
        return None
    # A handler runs because something would change, and acts on the server as those
    # changes would leave it; in check mode it sees the server as it is.
    if outcome == "skipped":
        return "a handler skipped by its condition, judged before the changes it follows"
    if outcome == "ok":
        return "a handler reporting no change in check mode, before the changes it follows"
    return None


def _text(value: Any, redact: Callable[[str], str], limit: int = PLAN_TEXT_LIMIT) -> str:
    """A name or message for the plan: masked first, then cut."""
    return redact(str(value))[:limit]


def _mentions_check_mode(result: dict[str, Any]) -> bool:
    reason = f"{result.get('skip_reason') or ''} {result.get('msg') or ''}"
    return CHECK_MODE_WORDS in reason.lower()


def _items(result: dict[str, Any]) -> list[dict[str, Any]]:
    items = result.get("results")
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _side(value: Any, redact: Callable[[str], str]) -> list[str]:
    text = redact(value if isinstance(value, str) else json.dumps(value, default=str))
    return text[:DIFF_SIDE_CHARS].splitlines()[:DIFF_SIDE_LINES]


def _target(result: dict[str, Any]) -> str | None:
    """The server's file a result is about (``dest`` or ``path``, in the result or the
    module's arguments): a template's diff headers name the rendered copy on the
    controller instead."""
    invocation = result.get("invocation")
    sources = [result]
    if isinstance(invocation, dict):
        arguments = invocation.get("module_args")
        sources += [invocation, arguments] if isinstance(arguments, dict) else [invocation]
    for source in sources:
        for name in ("dest", "path"):
            if isinstance(source.get(name), str) and source[name]:
                return str(source[name])
    return None


def _one_diff(diff: dict[str, Any], target: str | None, redact: Callable[[str], str]) -> str:
    prepared = diff.get("prepared")
    if isinstance(prepared, str):
        return redact(prepared)[:DIFF_SIDE_CHARS]
    before, after = diff.get("before"), diff.get("after")
    if before is None and after is None:
        return ""
    header = _text(target or diff.get("before_header") or diff.get("after_header") or "",
                   redact)
    if isinstance(before, dict) and isinstance(after, dict):
        # A state (file mode, owner, presence): the keys that change.
        changes = [f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
                   for key in sorted({*before, *after}, key=str)
                   if key != "path" and before.get(key) != after.get(key)]
        prefix = f"{header}: " if header and changes else ""
        return _text(prefix + ", ".join(changes), redact, PLAN_DIFF_LIMIT)
    return "\n".join(difflib.unified_diff(
        _side(before or "", redact), _side(after or "", redact), fromfile=header or "before",
        tofile=header or "after", lineterm="", n=1))


def diff_summary(result: dict[str, Any], redact: Callable[[str], str]) -> str | None:
    """What ``result`` shows would change (its diff, or its loop items' diffs), masked, then
    cut to PLAN_DIFF_LIMIT characters; None when it shows nothing."""
    found: list[tuple[Any, str | None]] = []
    for source in (result, *_items(result)):
        diff, target = source.get("diff"), _target(source)
        found += [(d, target) for d in (diff if isinstance(diff, list) else [diff])]
    parts = [_one_diff(d, target, redact) for d, target in found[:DIFFS_PER_TASK]
             if isinstance(d, dict)]
    text = "\n".join(p for p in parts if p)
    if not text:
        return None
    if len(text) > PLAN_DIFF_LIMIT:
        text = text[:PLAN_DIFF_LIMIT - len(CUT_MARK)] + CUT_MARK
    return text


class PlanCollector:
    """Judges a check-mode play's events as they arrive (an EventSink hands each over) and
    the plugin's notes after the play; ``plan()`` is the bounded result."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        self.redact = redact
        self._entries: dict[Key, _Entry] = {}
        # task_uuid -> the task and its place, for the plugin's notes on it
        self._noted: dict[str, tuple[Key, float]] = {}
        self._seen = 0  # events read: their order in the play

    def __call__(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind, data = event.get("event"), event.get("event_data")
        if not isinstance(kind, str) or not isinstance(data, dict) \
                or not isinstance(data.get("task"), str):
            return
        self._seen += 1
        key: Key = (_text(data["role"], self.redact) if isinstance(data.get("role"), str)
                    else None, _text(data["task"], self.redact))
        result = data.get("res")
        if not isinstance(result, dict):
            result = {}
        if kind == "runner_on_ok":
            self._judge_ok(key, result)
        elif kind == "runner_on_failed":
            message = result.get("msg") or "no message"
            self._record(key, PlanVerdict.UNKNOWN, self._seen,
                         reason=_text(f"failed in check mode: {message}", self.redact))
        if kind in NOTED_EVENTS and isinstance(data.get("task_uuid"), str) \
                and len(self._noted) < MAX_TRACKED_TASKS:
            self._noted[data["task_uuid"]] = (key, self._seen)

    def _judge_ok(self, key: Key, result: dict[str, Any]) -> None:
        items = _items(result)
        if result.get("changed") is True or any(i.get("changed") is True for i in items):
            diff = diff_summary(result, self.redact)
            if diff is None and (_mentions_check_mode(result)
                                 or any(_mentions_check_mode(i) for i in items)):
                self._record(key, PlanVerdict.UNKNOWN, self._seen,
                             reason="reports a change it cannot check in check mode "
                                    "(a command that would have run)")
            else:
                self._record(key, PlanVerdict.WOULD_CHANGE, self._seen, diff=diff)
        elif any(i.get("skipped") is True and _mentions_check_mode(i) for i in items):
            self._record(key, PlanVerdict.UNKNOWN, self._seen,
                         reason="some items were skipped: they cannot run in check mode")

    def add_notes(self, lines: Iterable[str]) -> None:
        """The plugin's notes (JSON lines) on the skipped and failed tasks: which of them
        check mode cannot tell, and the handlers those would notify."""
        for line in lines:
            try:
                note = json.loads(line)
            except ValueError:
                continue
            if not isinstance(note, dict) or not isinstance(note.get("task_uuid"), str) \
                    or note["task_uuid"] not in self._noted:
                continue
            (role, task), order = self._noted[note["task_uuid"]]
            reason = _unknown_because(note)
            if reason is not None:
                self._record((role, task), PlanVerdict.UNKNOWN, order, reason=reason)
            elif note.get("outcome") != "failed":
                continue  # skipped by its own condition: neither it nor its handlers run
            handlers = note.get("handlers")
            for handler in handlers if isinstance(handlers, list) else ():
                if isinstance(handler, dict) and isinstance(handler.get("name"), str):
                    named = handler.get("role")
                    key = (_text(named, self.redact) if isinstance(named, str) else None,
                           _text(handler["name"], self.redact))
                    self._record(key, PlanVerdict.UNKNOWN, order + 0.5, reason=_text(
                        f"a handler '{task}' would notify", self.redact))

    def _record(self, key: Key, verdict: PlanVerdict, order: float, *,
                reason: str | None = None, diff: str | None = None) -> None:
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) < MAX_TRACKED_TASKS:
                self._entries[key] = _Entry(order, verdict, reason, diff)
            return
        # A task met twice (a role included twice, a handler and its notifier): a checked
        # change outweighs an unknown; the first place in the play is kept.
        if entry.verdict is PlanVerdict.UNKNOWN and verdict is PlanVerdict.WOULD_CHANGE:
            entry.verdict, entry.reason, entry.diff = verdict, None, diff
        elif entry.diff is None and diff is not None:
            entry.diff = diff

    def plan(self) -> Plan:
        ordered = sorted(self._entries.items(), key=lambda kv: kv[1].order)
        tasks = [PlannedTask(task=task, role=role, verdict=e.verdict,
                             reason=e.reason if e.verdict is PlanVerdict.UNKNOWN else None,
                             diff=e.diff)
                 for (role, task), e in ordered[:PLAN_TASK_LIMIT]]
        would = sum(1 for _, e in ordered if e.verdict is PlanVerdict.WOULD_CHANGE)
        return Plan(tasks=tasks, would_change=would, unknown=len(ordered) - would,
                    truncated=len(ordered) > PLAN_TASK_LIMIT)
