"""Notes for a plan (check mode) that ansible-runner's events do not carry.

ansible-runner's ``runner_on_skipped`` event has no result, so a task skipped because it
cannot run in check mode (a command) looks like one skipped by its condition; no event says
whether a task is a handler; and none says which handlers a task would notify had it not
failed (or been skipped) in check mode. This plugin writes one JSON line per skipped or
failed task, and per handler that reported no change, to the file named by
``INFRA_PLAN_NOTES``: the task's id (the events' ``task_uuid``), how it ended (``ok``,
``skipped``, ``failed``), whether check mode caused the skip, whether it is a handler, and
the handlers it would notify (names resolved against the play's handlers and their
``listen`` topics, and through the handlers those notify). The runner reads the file after
the play (runner_image/plan.py).

Without ``INFRA_PLAN_NOTES`` (the runner sets it for plans only) the plugin does nothing.
It writes no result content: only names, ids and flags.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.playbook.handler import Handler
from ansible.plugins.callback import CallbackBase

NOTES_VARIABLE = "INFRA_PLAN_NOTES"
# How Ansible says a task was skipped because of check mode: the command module's "would
# have run if not in check mode", an action's "does not support check mode".
CHECK_MODE_WORDS = "check mode"


def skipped_for_check_mode(result: dict[str, Any]) -> bool:
    """Whether a skipped result (or an item of a looped one) was skipped by check mode."""
    items = result.get("results")
    if isinstance(items, list) and items:
        return any(isinstance(i, dict) and skipped_for_check_mode(i) for i in items)
    reason = f"{result.get('skip_reason') or ''} {result.get('msg') or ''}".lower()
    return CHECK_MODE_WORDS in reason


def _role(task: Any) -> str | None:
    role = getattr(task, "_role", None)
    return None if role is None else str(role.get_name(include_role_fqcn=False))


def _flatten(blocks: list[Any]) -> list[Any]:
    tasks: list[Any] = []
    for item in blocks:
        if hasattr(item, "block"):  # a Block: its tasks, rescue and always sections
            for section in ("block", "rescue", "always"):
                tasks += _flatten(getattr(item, section, None) or [])
        else:
            tasks.append(item)
    return tasks


def _notifications(task: Any) -> list[str]:
    notify = getattr(task, "notify", None)
    if isinstance(notify, str):
        return [notify]
    return [str(n) for n in notify] if isinstance(notify, list) else []


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "infra_plan_notes"
    # Active wherever it is on the callback path; inert without the environment variable.
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        self._path = os.environ.get(NOTES_VARIABLE) or None
        self._handlers: list[Any] = []

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._handlers = [h for h in _flatten(list(play.handlers or [])) if isinstance(h, Handler)]

    def _listening(self, notification: str) -> list[Any]:
        """The play's handlers a notification reaches, as Ansible matches them: by name
        (with or without its role) or by a ``listen`` topic."""
        return [h for h in self._handlers
                if notification in {h.name, h.get_name()} or notification in (h.listen or [])]

    def _reached(self, task: Any) -> list[dict[str, str | None]]:
        """Every handler ``task`` would notify, and the handlers those would notify."""
        found: dict[int, Any] = {}
        waiting = _notifications(task)
        while waiting and len(found) < len(self._handlers):
            for handler in self._listening(waiting.pop()):
                if id(handler) not in found:
                    found[id(handler)] = handler
                    waiting += _notifications(handler)
        return [{"name": str(h.name), "role": _role(h)} for h in found.values()]

    def _note(self, result: Any, outcome: str) -> None:
        if self._path is None:
            return
        task = result._task
        note = {"task_uuid": str(task._uuid), "outcome": outcome,
                "check_mode_skip": outcome == "skipped"
                and skipped_for_check_mode(result._result),
                "handler": isinstance(task, Handler), "handlers": self._reached(task)}
        with open(self._path, "a", encoding="utf-8") as notes:
            notes.write(json.dumps(note) + "\n")

    def v2_runner_on_ok(self, result: Any) -> None:
        # Only a handler that says "no change": the change it follows was not made.
        if isinstance(result._task, Handler) and not result._result.get("changed"):
            self._note(result, "ok")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._note(result, "skipped")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._note(result, "failed")
