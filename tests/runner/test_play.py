"""The play's start gate (runner_image.play.start_play with gated=True and the
infra_start_gate callback): a real ansible-playbook on a local-connection play, which
writes a marker file as its only task. Until released it runs nothing; a closed gate, a
silent runner or an expired wait end it before any task."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from runner_image import play as play_module
from runner_image.plan import PlanCollector
from runner_image.play import GateUnavailable, StartedPlay, run_playbooks, start_play
from runner_image.play_env import PlayEnvironment, prepare_environment
from runner_image.redaction import Redactor

GATE_CLOSED_EXIT = 90  # runner_image/ansible_callbacks/infra_start_gate.py

PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: "{{ marker }}"
        content: "ran\\n"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    (directory / "playbooks").mkdir(parents=True)
    (directory / "playbooks" / "mark.yml").write_text(PLAYBOOK)
    return directory


async def started(tmp_path: Path, project: Path, gate_timeout: float | None = None
                  ) -> tuple[StartedPlay, Path, PlayEnvironment]:
    marker = tmp_path / "marker"
    env = prepare_environment(
        tmp_path / "pd", project, tmp_path / "ssh_config", tmp_path / "c",
        {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
         "marker": str(marker)}, "local")
    play = await start_play(env, project / "playbooks" / "mark.yml", {}, Redactor(),
                            gated=True, gate_timeout=gate_timeout)
    return play, marker, env


async def at_gate(play: StartedPlay, limit: float = 60.0) -> None:
    """Until ansible-playbook has loaded the playbook and announced it (then it waits)."""
    until = time.monotonic() + limit
    while "playbook_on_start" not in play.sink.seen:
        assert play.proc.returncode is None, play.raw.text
        assert time.monotonic() < until, "ansible-playbook never reached its gate"
        await asyncio.sleep(0.05)


async def test_a_released_play_runs(tmp_path: Path, project: Path) -> None:
    play, marker, env = await started(tmp_path, project)
    await at_gate(play)
    await asyncio.sleep(2)  # the task alone takes well under that here
    assert play.proc.returncode is None and not marker.exists()  # held, nothing ran
    outcome = await run_playbooks(env, [play.playbook], budget=60, budget_source="test",
                                  cancelled=threading.Event(), context={}, redact=Redactor(),
                                  first=play)
    assert outcome.status.value == "successful", play.raw.text
    assert marker.read_text() == "ran\n"
    assert outcome.recap.changed == 1


async def test_a_closed_gate_ends_the_play_before_any_task(tmp_path: Path,
                                                           project: Path) -> None:
    play, marker, _ = await started(tmp_path, project)
    await at_gate(play)
    assert play.gate is not None
    # What the child sees when the runner closes its end (or dies): end of file.
    play.gate, gate = None, play.gate
    os.close(gate)
    assert await asyncio.wait_for(play.proc.wait(), 30) == GATE_CLOSED_EXIT
    await play.pump
    assert "did not release the play" in play.raw.text
    assert not marker.exists()
    assert "runner_on_ok" not in play.sink.seen and "playbook_on_task_start" not in play.sink.seen


async def test_an_unanswered_gate_expires(tmp_path: Path, project: Path) -> None:
    play, marker, _ = await started(tmp_path, project, gate_timeout=0.5)
    try:
        assert await asyncio.wait_for(play.proc.wait(), 60) == GATE_CLOSED_EXIT
        assert not marker.exists()
    finally:
        await play.abandon()


async def test_abandon_stops_a_play_still_starting(tmp_path: Path, project: Path) -> None:
    play, marker, _ = await started(tmp_path, project)
    await play.abandon()  # at once: ansible-playbook is still importing
    assert play.proc.returncode is not None and play.gate is None
    await play.abandon()  # idempotent
    await asyncio.sleep(0.5)
    assert not marker.exists()


async def test_no_gated_start_without_the_gate_plugin(tmp_path: Path, project: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its gate, an early ansible-playbook would run its play at once: refused."""
    monkeypatch.setattr(play_module, "GATE_PLUGIN", tmp_path / "missing.py")
    with pytest.raises(GateUnavailable, match=r"missing\.py is missing"):
        await started(tmp_path, project)
    assert not (tmp_path / "pd" / "artifacts").exists()  # nothing was prepared or started


PLAN_PLAYBOOK = """\
- hosts: all
  gather_facts: false
  ignore_errors: "{{ ansible_check_mode }}"
  handlers:
    - name: Announce
      ansible.builtin.command: "true"
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: "{{ marker }}"
        content: "ran\\n"
    - name: Run a command
      ansible.builtin.command: touch {{ marker }}.command
    - name: Read the marker
      ansible.builtin.slurp:
        src: "{{ marker }}"
      notify: Announce
    - name: Skip by condition
      ansible.builtin.command: touch {{ marker }}.skipped
      when: false
"""


async def test_a_plan_runs_in_check_mode_and_lists_what_would_change(tmp_path: Path,
                                                                     project: Path) -> None:
    """ansible-playbook gets --check --diff and the notes plugin: nothing is written, the
    copy would change (with its diff), the command cannot run in check mode, the read fails
    because the copy did not really run, and the handler it notifies cannot be told."""
    (project / "playbooks" / "plan.yml").write_text(PLAN_PLAYBOOK)
    marker = tmp_path / "marker"
    collector = PlanCollector(Redactor())
    env = prepare_environment(
        tmp_path / "pd", project, tmp_path / "ssh_config", tmp_path / "c",
        {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
         "marker": str(marker)}, "local", plan=collector)
    play = await start_play(env, project / "playbooks" / "plan.yml", {}, Redactor(), gated=True)
    outcome = await run_playbooks(env, [play.playbook], budget=60, budget_source="test",
                                  cancelled=threading.Event(), context={}, redact=Redactor(),
                                  first=play)
    assert outcome.status.value == "successful", play.raw.text
    commanded = tmp_path / "marker.command"
    assert not marker.exists() and not commanded.exists()
    assert outcome.plan is not None
    listed = [(t.task, t.verdict.value) for t in outcome.plan.tasks]
    assert listed == [("Write the marker", "would_change"), ("Run a command", "unknown"),
                      ("Read the marker", "unknown"), ("Announce", "unknown")], play.raw.text
    assert "+ran" in (outcome.plan.tasks[0].diff or "")
    assert (outcome.plan.would_change, outcome.plan.unknown) == (1, 3)
