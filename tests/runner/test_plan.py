"""runner_image/plan.py: check-mode events to a plan, whatever the events hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.results import PLAN_DIFF_LIMIT, PLAN_TASK_LIMIT, PLAN_TEXT_LIMIT, PlanVerdict
from runner_image.ansible_callbacks.infra_plan_notes import skipped_for_check_mode
from runner_image.plan import PlanCollector, diff_summary
from runner_image.redaction import Redactor

pytestmark = pytest.mark.unit

SECRET = "plan-s3cret-value-0042"


def event(kind: str, task: str, role: str | None = "base", uuid: str | None = None,
          **res: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"task": task, "res": res, "task_uuid": uuid or f"u-{task}"}
    if role is not None:
        data["role"] = role
    return {"event": kind, "event_data": data}


def collect(*events: dict[str, Any], notes: list[dict[str, Any]] | None = None
            ) -> PlanCollector:
    collector = PlanCollector(Redactor([SECRET]))
    for one in events:
        collector(one)
    collector.add_notes(json.dumps(n) for n in notes or [])
    return collector


def verdicts(collector: PlanCollector) -> list[tuple[str | None, str, PlanVerdict]]:
    return [(t.role, t.task, t.verdict) for t in collector.plan().tasks]


def test_a_checked_change_with_a_diff_would_change() -> None:
    diff = {"before": "a=1\n", "after": "a=2\n", "before_header": "/etc/x.conf",
            "after_header": "/etc/x.conf"}
    plan = collect(event("runner_on_ok", "Write x", changed=True, diff=diff)).plan()
    [task] = plan.tasks
    assert (task.verdict, task.reason) == (PlanVerdict.WOULD_CHANGE, None)
    assert task.diff is not None and "-a=1" in task.diff and "+a=2" in task.diff
    assert (plan.would_change, plan.unknown, plan.truncated) == (1, 0, False)


def test_unchanged_and_conditionally_skipped_tasks_are_not_listed() -> None:
    collector = collect(event("runner_on_ok", "Read", changed=False),
                        event("runner_on_skipped", "Only on Ubuntu"),
                        notes=[{"task_uuid": "u-Only on Ubuntu", "outcome": "skipped",
                                "check_mode_skip": False, "handler": False,
                                "handlers": [{"name": "Restart", "role": "base"}]}])
    assert collector.plan().tasks == []


def test_what_check_mode_cannot_tell_is_unknown() -> None:
    collector = collect(
        # A module that checked: a change without a diff still would change.
        event("runner_on_ok", "Create the admin account", role="admin_user", changed=True),
        # A command that "would have run": nothing was checked.
        event("runner_on_ok", "Install python3-apt", role=None, changed=True,
              msg="Command would have run if not in check mode"),
        event("runner_on_failed", "Install Docker", role="docker",
              msg="python3-apt must be installed to use check mode"),
        event("runner_on_skipped", "Load the ruleset", role="firewall"),
        event("runner_on_ok", "Run each", changed=False,
              results=[{"skipped": True, "msg": "Command would have run if not in check mode"}]),
        notes=[{"task_uuid": "u-Load the ruleset", "outcome": "skipped", "check_mode_skip": True,
                "handler": False, "handlers": []}])
    assert verdicts(collector) == [
        ("admin_user", "Create the admin account", PlanVerdict.WOULD_CHANGE),
        (None, "Install python3-apt", PlanVerdict.UNKNOWN),
        ("docker", "Install Docker", PlanVerdict.UNKNOWN),
        ("firewall", "Load the ruleset", PlanVerdict.UNKNOWN),
        ("base", "Run each", PlanVerdict.UNKNOWN),
    ]
    reasons = [t.reason for t in collector.plan().tasks[1:]]
    assert all(reasons) and "failed in check mode: python3-apt" in str(reasons[1])


def test_handlers_a_failed_task_would_notify_are_unknown_after_it() -> None:
    collector = collect(
        event("runner_on_failed", "Install sshd_config", role="ssh", msg="not found"),
        event("runner_on_ok", "Write the ruleset", role="firewall", changed=True,
              diff={"before": "", "after": "table\n"}),
        event("runner_on_skipped", "Reload Docker", role="docker"),
        event("runner_on_ok", "Reload nothing", role="docker", changed=False),
        notes=[{"task_uuid": "u-Install sshd_config", "outcome": "failed",
                "check_mode_skip": False, "handler": False,
                "handlers": [{"name": "Reload sshd", "role": "ssh"},
                             {"name": "Restart the socket", "role": None}]},
               {"task_uuid": "u-Reload Docker", "outcome": "skipped", "check_mode_skip": False,
                "handler": True, "handlers": []},
               {"task_uuid": "u-Reload nothing", "outcome": "ok", "check_mode_skip": False,
                "handler": True, "handlers": []}])
    assert verdicts(collector) == [
        ("ssh", "Install sshd_config", PlanVerdict.UNKNOWN),
        ("ssh", "Reload sshd", PlanVerdict.UNKNOWN),
        (None, "Restart the socket", PlanVerdict.UNKNOWN),
        ("firewall", "Write the ruleset", PlanVerdict.WOULD_CHANGE),
        # A notified handler skipped by a condition judged before the changes it follows.
        ("docker", "Reload Docker", PlanVerdict.UNKNOWN),
        # One reporting no change: it acted on the server before the changes it follows.
        ("docker", "Reload nothing", PlanVerdict.UNKNOWN),
    ]


def test_a_task_met_twice_is_listed_once_and_a_checked_change_wins() -> None:
    collector = collect(event("runner_on_failed", "Restart Docker", role="docker", msg="x"),
                        event("runner_on_ok", "Restart Docker", role="docker", changed=True))
    plan = collector.plan()
    assert verdicts(collector) == [("docker", "Restart Docker", PlanVerdict.WOULD_CHANGE)]
    assert (plan.would_change, plan.unknown) == (1, 0)


def test_secrets_are_masked_before_the_diff_is_cut() -> None:
    # The secret straddles the cut: masking first leaves no part of it.
    before = "x" * (PLAN_DIFF_LIMIT - 40)
    diff = {"before": "", "after": before + SECRET + "\n" + "y\n" * 2000}
    summary = diff_summary({"diff": diff}, Redactor([SECRET]))
    assert summary is not None and len(summary) <= PLAN_DIFF_LIMIT
    assert SECRET[:8] not in summary
    collector = collect(event("runner_on_failed", f"Use {SECRET}", msg=f"bad {SECRET}"))
    assert SECRET not in collector.plan().model_dump_json()


def test_state_diffs_show_what_changes() -> None:
    summary = diff_summary({"path": "/etc/docker",
                            "diff": {"before": {"path": "/etc/docker", "state": "absent"},
                                     "after": {"path": "/etc/docker", "state": "directory"}}},
                           Redactor())
    assert summary == "/etc/docker: state: 'absent' -> 'directory'"
    # A template's headers name its rendered copy on the controller: the server's file wins.
    template = diff_summary({"invocation": {"dest": "/etc/sysctl.d/60-infra.conf"},
                             "diff": [{"before": "", "after": "a = 1\n",
                                       "after_header": "/tmp/x/ansible-local-1/t.j2"}]},
                            Redactor())
    assert template is not None and "ansible-local" not in template
    assert template.startswith("--- /etc/sysctl.d/60-infra.conf\n+++ /etc/sysctl.d/60-infra.conf")
    assert diff_summary({"diff": {"prepared": "+ docker.io"}}, Redactor()) == "+ docker.io"
    assert diff_summary({"diff": {"before": "a", "after": "a"}}, Redactor()) is None
    assert diff_summary({"changed": True}, Redactor()) is None


def test_the_list_is_bounded_and_the_counts_cover_every_task() -> None:
    events = [event("runner_on_ok", f"Task {i}", changed=True) for i in range(PLAN_TASK_LIMIT + 7)]
    plan = collect(*events).plan()
    assert len(plan.tasks) == PLAN_TASK_LIMIT
    assert (plan.would_change, plan.truncated) == (PLAN_TASK_LIMIT + 7, True)
    assert plan.tasks[0].task == "Task 0"


def test_the_notes_plugin_tells_a_check_mode_skip_from_a_condition() -> None:
    assert skipped_for_check_mode({"skipped": True,
                                   "msg": "Command would have run if not in check mode"})
    assert skipped_for_check_mode({"msg": "This action (x) does not support check mode."})
    assert not skipped_for_check_mode({"skip_reason": "Conditional result was False"})
    assert skipped_for_check_mode({"results": [
        {"skip_reason": "Conditional result was False"},
        {"msg": "Command would have run if not in check mode"}]})


# -- whatever the events hold ---------------------------------------------------------------
_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=30)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
_kinds = st.sampled_from(["runner_on_ok", "runner_on_failed", "runner_on_skipped",
                          "runner_on_unreachable", "playbook_on_stats", "verbose"])
_diff = st.fixed_dictionaries({}, optional={
    "before": _json, "after": _json, "prepared": _json, "before_header": _json,
    "after_header": _json})
_res = st.fixed_dictionaries({}, optional={
    "changed": _json, "msg": _json, "skipped": _json, "skip_reason": _json,
    "diff": _diff | st.lists(_diff, max_size=3) | _json,
    "results": st.lists(st.fixed_dictionaries({}, optional={
        "changed": _json, "skipped": _json, "msg": _json, "diff": _diff}), max_size=3) | _json})
_data = st.fixed_dictionaries({}, optional={
    "task": st.text(max_size=400) | _json, "role": st.text(max_size=400) | _json,
    "task_uuid": st.sampled_from(["a", "b", "c"]) | _json, "res": _res | _json})
_events = st.fixed_dictionaries({}, optional={"event": _kinds | _json, "event_data": _data | _json})
_handler = st.fixed_dictionaries({}, optional={"name": st.text(max_size=400) | _json,
                                               "role": st.text(max_size=400) | _json})
_notes = st.lists(st.fixed_dictionaries({}, optional={
    "task_uuid": st.sampled_from(["a", "b", "c"]) | _json, "check_mode_skip": _json,
    "outcome": st.sampled_from(["ok", "skipped", "failed"]) | _json, "handler": _json,
    "handlers": st.lists(_handler | _json, max_size=3) | _json}).map(json.dumps)
    | st.text(max_size=50), max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(_events | _json, max_size=12), _notes)
def test_arbitrary_events_never_crash_and_the_plan_stays_bounded(
        events: list[Any], notes: list[str]) -> None:
    collector = PlanCollector(Redactor([SECRET]))
    for one in events:
        collector(one)
    collector.add_notes(notes)
    plan = collector.plan()
    assert len(plan.tasks) <= PLAN_TASK_LIMIT
    assert plan.would_change + plan.unknown >= len(plan.tasks)
    for task in plan.tasks:
        assert len(task.task) <= PLAN_TEXT_LIMIT
        assert task.diff is None or len(task.diff) <= PLAN_DIFF_LIMIT
        assert (task.reason is None) == (task.verdict is PlanVerdict.WOULD_CHANGE)
