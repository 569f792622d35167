"""The ansible event sink (runner_image.play_events.EventSink): what the result keeps of a play's
events, fed ansible-runner's event dicts directly."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.results import ErrorKind, PlayRecap
from runner_image.play_events import TAIL_CHARS, EventSink
from runner_image.redaction import MASK, Redactor

pytestmark = pytest.mark.unit

SECRET = "Pa55-do-not-leak-91c2"


def failed(task: str, *, ignore: bool = False, **res: Any) -> dict[str, Any]:
    return {"event": "runner_on_failed",
            "event_data": {"task": task, "host": "web-7", "ignore_errors": ignore, "res": res}}


def test_the_first_failure_that_counts_is_kept() -> None:
    sink = EventSink({}, Redactor())
    assert sink(failed("probe", ignore=True, msg="expected")) is False  # no event files
    sink(failed("install docker", msg="apt failed", rc=100, stderr="E: broken"))
    sink(failed("later task", msg="second"))
    assert sink.failure is not None
    assert sink.failure.kind is ErrorKind.PLAY_FAILED
    assert (sink.failure.task, sink.failure.host, sink.failure.return_code) == (
        "install docker", "web-7", 100)
    assert sink.failure.message == "task 'install docker' failed on web-7: apt failed"
    assert sink.failure.output_tail == "E: broken"
    assert not sink.unreachable


def test_an_unreachable_host() -> None:
    sink = EventSink({}, Redactor())
    sink({"event": "runner_on_unreachable", "event_data": {
        "task": "Gathering Facts", "host": "web-7", "res": {"msg": "ssh: connect timed out"}}})
    assert sink.unreachable and sink.failure is not None
    assert sink.failure.kind is ErrorKind.SSH_UNREACHABLE
    assert sink.failure.return_code is None


def test_the_output_tail_is_masked_then_cut() -> None:
    sink = EventSink({}, Redactor([SECRET]))
    stdout = "x" * 10_000 + SECRET + "y" * (TAIL_CHARS - 10)
    sink(failed("t", msg=f"failed with {SECRET}", stdout=stdout, stderr="err", rc=True))
    assert sink.failure is not None
    tail = sink.failure.output_tail or ""
    assert len(tail) == TAIL_CHARS and SECRET not in tail and MASK in tail
    assert SECRET not in sink.failure.message
    assert sink.failure.return_code == 1  # a bool rc (isinstance int) becomes 0 or 1


def test_a_failure_without_a_message_or_output() -> None:
    sink = EventSink({}, Redactor())
    sink({"event": "runner_on_failed", "event_data": {"task": "t", "host": "h",
                                                       "res": "not a dict"}})
    assert sink.failure is not None
    assert sink.failure.message == "task 't' failed on h: task failed without a message"
    assert sink.failure.output_tail is None


def test_stats_become_the_recap_details_and_structured_stats() -> None:
    sink = EventSink({}, Redactor([SECRET]))
    sink({"event": "playbook_on_stats", "event_data": {
        "ok": {"web-7": 10, "other": 2}, "changed": {"web-7": 3}, "failures": {},
        "dark": {"web-7": 1}, "skipped": {"web-7": "n/a"},
        "artifact_data": {"freed_bytes": 1024, "docker_restarted": False,
                          "note": f"token {SECRET}", "nested": {"a": 1},
                          "infra_ssh": {"connect_port": 2222, "moved": True}}}})
    assert sink.recap() == PlayRecap(ok=12, changed=3, unreachable=1)
    assert sink.details == {"freed_bytes": 1024, "docker_restarted": False,
                            "note": f"token {MASK}"}
    assert sink.stats_data == {"infra_ssh": {"connect_port": 2222, "moved": True}}
    assert sink.failure is None


def test_without_stats_the_recap_is_empty() -> None:
    assert EventSink({}, Redactor()).recap() == PlayRecap()
