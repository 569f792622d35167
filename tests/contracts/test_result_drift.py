"""Every result either side can build matches the published JSON schema.

The runner's and the dispatcher's result building are pure functions; each branch is run
here and its entry, serialised exactly as it is published, is validated against
dispatcher/json_schemas/provisioner-result.schema.json (what a Scheduler validates with).
A kind, status or field that drifts from the published contract fails here, without hosts.
"""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.messages import Action, InvalidMessage, RejectReason, RunMode, parse_message
from contracts.results import OUTPUT_TAIL_LIMIT, ErrorKind, PlayRecap, ResultEntry
from dispatcher.executors.base import JobEnd
from dispatcher.failures import failure_result
from dispatcher.kube.classify import JobEndReason
from dispatcher.rejects import rejection_result
from runner_image import outcome as out
from runner_image.play import PlayOutcome, PlayStatus, timeout_error
from runner_image.play_events import EventSink
from runner_image.redaction import Redactor
from runner_image.report import build_entry
from tests.support.result_schema import RESULT_SCHEMA, assert_published_shape

pytestmark = pytest.mark.unit

SECRET = "s3cret-Pa55word-in-output"
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def published(entry: ResultEntry) -> dict[str, Any]:
    """The entry as the Scheduler reads it off Redis (publish_result pushes to_json())."""
    return assert_published_shape(entry.to_json())


def runner_entry(outcome: out.Outcome, *, request_id: str | None = "req-1",
                 handle: str | None = "web-7", action: Action | None = Action.SETUP,
                 mode: RunMode | None = RunMode.RUN,
                 redact: Redactor | None = None) -> dict[str, Any]:
    return published(build_entry(outcome, request_id=request_id, handle=handle, action=action,
                                 mode=mode, job_name="web-7-setup-3f9c2a1b", started_at=T0,
                                 duration=1.25, redact=redact or Redactor([SECRET])))


# -- the schema itself ------------------------------------------------------------------------
def test_every_vocabulary_is_an_enum_in_the_schema() -> None:
    defs = RESULT_SCHEMA["$defs"]
    assert defs["ErrorKind"]["enum"] == [k.value for k in ErrorKind]
    assert defs["ResultStatus"]["enum"] == ["succeeded", "failed", "unreachable", "timed_out",
                                            "rejected", "planned"]
    assert defs["PlanVerdict"]["enum"] == ["would_change", "unknown"]
    assert defs["Reporter"]["enum"] == ["runner", "dispatcher"]
    assert defs["Action"]["enum"] == [a.value for a in Action]
    assert defs["ResultError"]["properties"]["kind"] == {
        "$ref": "#/$defs/ErrorKind", "description": "Machine-readable class of the failure"}


def test_every_error_kind_is_explained_in_the_schema() -> None:
    description = RESULT_SCHEMA["$defs"]["ErrorKind"]["description"]
    assert [k.value for k in ErrorKind if k.value not in description] == []


def test_the_schema_refuses_a_kind_outside_the_vocabulary() -> None:
    # The check below is only worth something if the schema can say no.
    entry = runner_entry(out.failed(ErrorKind.PLAY_FAILED, "task x failed"))
    entry["error"]["kind"] = "something_new"
    with pytest.raises(AssertionError, match="error/kind"):
        assert_published_shape(entry)


# -- runner ---------------------------------------------------------------------------------
RUNNER_KINDS_BY_STATUS = {
    # The runner's own branches (runner_image/job.py, __main__.py, play.py).
    "failed": [ErrorKind.SERVER_BUSY, ErrorKind.UNKNOWN_SERVER, ErrorKind.DATABASE_UNAVAILABLE,
               ErrorKind.PROVIDER_ERROR, ErrorKind.HOST_KEY_MISMATCH,
               ErrorKind.DEPLOY_KEY_FAILED, ErrorKind.LOCK_LOST, ErrorKind.RUNNER_ENVIRONMENT,
               ErrorKind.INTERNAL],
    # SSH_AUTH_FAILED: a plan that only a password lets in (it installs no key).
    "rejected": [ErrorKind.INVALID_MESSAGE, ErrorKind.CONFIG_ERROR, ErrorKind.SSH_AUTH_FAILED],
    "unreachable": [ErrorKind.SSH_UNREACHABLE, ErrorKind.SSH_AUTH_FAILED],
}


def test_the_cases_above_cover_every_kind_the_runner_names() -> None:
    # A new ErrorKind used in runner_image/ must get its case here.
    named = {node.attr for path in (Path(__file__).parents[2] / "runner_image").rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
             and node.value.id == "ErrorKind"}
    covered = {k.name for kinds in RUNNER_KINDS_BY_STATUS.values() for k in kinds}
    covered |= {"DEADLINE_EXCEEDED", "CANCELLED", "PLAY_FAILED", "PLAY_TIMEOUT"}  # below
    assert named - covered == set()


@pytest.mark.parametrize("kind", RUNNER_KINDS_BY_STATUS["failed"])
def test_runner_failures(kind: ErrorKind) -> None:
    entry = runner_entry(out.failed(kind, f"it failed, {SECRET} leaked", server_status=None))
    assert (entry["status"], entry["error"]["kind"]) == ("failed", kind.value)
    assert SECRET not in json.dumps(entry)


@pytest.mark.parametrize("kind", RUNNER_KINDS_BY_STATUS["rejected"])
def test_runner_rejections_with_and_without_a_readable_message(kind: ErrorKind) -> None:
    outcome = out.rejected(kind, "configuration: SSH_PRIVATE_KEY is missing")
    assert runner_entry(outcome)["status"] == "rejected"
    # An unreadable message: no request id, handle or action (report_only in __main__).
    bare = runner_entry(outcome, request_id=None, handle=None, action=None)
    assert bare["request_id"] is None and bare["server_handle"] is None


@pytest.mark.parametrize("kind", RUNNER_KINDS_BY_STATUS["unreachable"])
def test_runner_unreachable(kind: ErrorKind) -> None:
    assert runner_entry(out.unreachable(kind, "ssh to root@192.0.2.7:22: timed out"))[
        "status"] == "unreachable"


@pytest.mark.parametrize("claimed", [True, False])
def test_runner_deadline_and_cancellation(claimed: bool) -> None:
    assert runner_entry(out.deadline_exceeded("the SSH check reached the deadline"))[
        "error"]["kind"] == "deadline_exceeded"
    entry = runner_entry(out.cancelled("before the play started", claimed=claimed))
    assert (entry["status"], entry["error"]["kind"]) == ("failed", "cancelled")


def test_runner_success_with_port_and_details() -> None:
    outcome = out.succeeded(PlayRecap(ok=12, changed=3),
                            {"freed_bytes": 10**12, "docker_restarted": True, "ratio": 0.5,
                             "note": f"x {SECRET}", "none": None})
    outcome.ssh_port, outcome.ssh_port_changed = 2222, True
    entry = runner_entry(outcome)
    assert entry["status"] == "succeeded" and entry["error"] is None
    assert entry["ssh_port"] == 2222


@pytest.mark.parametrize("status", list(PlayStatus))
@pytest.mark.parametrize("with_error", [True, False])
def test_every_play_status(status: PlayStatus, with_error: bool) -> None:
    sink = EventSink({}, Redactor([SECRET]))
    sink({"event": "runner_on_failed", "event_data": {
        "task": "install docker", "host": "web-7",
        "res": {"msg": "apt failed", "rc": 100, "stderr": "E: " + SECRET + "x" * 9000}}})
    played = PlayOutcome(status, PlayRecap(ok=3, failed=1),
                         sink.failure if with_error else None, 12.5)
    outcome = out.from_play(played)
    outcome.recap = played.recap
    entry = runner_entry(outcome)
    if status is not PlayStatus.SUCCESSFUL:
        assert entry["error"]["kind"] in {"play_failed", "internal"}
        assert len(entry["error"]["output_tail"] or "") <= OUTPUT_TAIL_LIMIT


@pytest.mark.parametrize("source", ["PLAY_TIMEOUT=1800s", "the Job's deadline"])
def test_play_timeout(source: str) -> None:
    error = timeout_error(1800.0, source, Path("setup_server.yml"))
    entry = runner_entry(out.from_play(PlayOutcome(PlayStatus.TIMEOUT, error=error)))
    assert (entry["status"], entry["error"]["kind"]) == ("timed_out", "play_timeout")


def test_failed_with_every_detail_field() -> None:
    outcome = out.failed(ErrorKind.PLAY_FAILED, "task failed", task="t", host="h",
                         return_code=2, output_tail="y" * OUTPUT_TAIL_LIMIT)
    assert runner_entry(outcome)["error"]["return_code"] == 2


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
_res = st.dictionaries(
    st.sampled_from(["msg", "rc", "stderr", "stdout", "module_stderr", "module_stdout",
                     "changed", "other"]),
    _json_leaf | st.text(max_size=3000), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.fixed_dictionaries({
    "event": st.sampled_from(["runner_on_failed", "runner_on_unreachable", "runner_on_ok",
                              "playbook_on_stats", "verbose"]),
    "event_data": st.fixed_dictionaries({
        "task": st.none() | st.text(max_size=40), "host": st.none() | st.text(max_size=40),
        "ignore_errors": st.booleans(), "res": _res,
        "ok": st.dictionaries(st.text(max_size=5), st.integers(0, 10**6), max_size=3),
        "failures": st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=3),
        "artifact_data": st.dictionaries(st.text(max_size=10), _json_leaf, max_size=4)})}),
    max_size=6), secret=st.text(min_size=8, max_size=20))
def test_whatever_ansible_reports_the_result_matches_the_schema(
        events: list[dict[str, Any]], secret: str) -> None:
    """The event sink turns Ansible's events (task results of any shape, stats set by the
    play) into the result's error, recap and details; none of it may leave the contract."""
    sink = EventSink({}, Redactor([secret]))
    for event in events:
        sink(event)
    status = (PlayStatus.UNREACHABLE if sink.unreachable
              else PlayStatus.FAILED if sink.failure else PlayStatus.SUCCESSFUL)
    played = PlayOutcome(status, sink.recap(), sink.failure, 1.0, sink.details)
    outcome = out.from_play(played)
    outcome.recap, outcome.details = played.recap, {**outcome.details, **played.details}
    runner_entry(outcome, redact=Redactor([secret]))


# -- dispatcher -----------------------------------------------------------------------------
def job_end(reason: str, *, succeeded: bool = False, action: str | None = "setup",
            started: bool = True, mode: str | None = "run") -> JobEnd:
    return JobEnd(job_name="web-7-setup-3f9c2a1b", server_handle="web-7", request_id="req-1",
                  succeeded=succeeded, reason=reason, message="the pod failed",
                  started_at=T0 if started else None, action=action, mode=mode)


@pytest.mark.parametrize("reason", [*JobEndReason, "ContainerCannotRun"])
@pytest.mark.parametrize("action", [*Action, None, "not-an-action"])
def test_dispatcher_result_for_every_job_end(reason: str, action: str | None) -> None:
    entry = published(failure_result(job_end(reason, action=action), now=T0 + timedelta(1)))
    assert entry["reported_by"] == "dispatcher"
    assert entry["status"] == ("timed_out" if reason == "DeadlineExceeded" else "failed")


@pytest.mark.parametrize(("label", "mode"), [("plan", "plan"), ("run", "run"), (None, None),
                                             ("not-a-mode", None)])
def test_a_dispatcher_result_says_whether_the_job_was_a_plan(label: str | None,
                                                              mode: str | None) -> None:
    """A plan Job that died (OOM, deadline) is reported as a failed plan, not as a failed
    setup: the Scheduler reads ``mode`` without looking up its request."""
    entry = published(failure_result(job_end("OOMKilled", mode=label)))
    assert (entry["status"], entry["mode"]) == ("failed", mode)


def test_dispatcher_result_for_a_job_that_succeeded_silently_or_never_started() -> None:
    entry = published(failure_result(job_end("Completed", succeeded=True)))
    assert entry["error"]["kind"] == "job_failed"
    assert published(failure_result(job_end("PodNotCreated", started=False)))[
        "duration_seconds"] is None


REJECTED_PAYLOADS = {
    RejectReason.MISSING_FIELD: '{"request_id": "r-1"}',
    RejectReason.UNKNOWN_FIELD: '{"server_handle": "web-7", "is_recovry": true}',
    RejectReason.WRONG_TYPE: '{"server_handle": "web-7", "is_recovery": "yes"}',
    RejectReason.BAD_HANDLE: '{"server_handle": "web 7", "request_id": "r-1"}',
    RejectReason.CONFLICTING_FLAGS:
        '{"server_handle": "web-7", "force_reinstall": true, "is_recovery": true}',
}
# Other payloads rejected for a reason above: (reason, payload).
MORE_REJECTED_PAYLOADS = [
    (RejectReason.CONFLICTING_FLAGS,
     '{"server_handle": "web-7", "plan": true, "force_reinstall": true, "request_id": "r-2"}'),
]


@pytest.mark.parametrize(("reason", "payload"),
                         [*REJECTED_PAYLOADS.items(), *MORE_REJECTED_PAYLOADS])
def test_dispatcher_result_for_every_rejected_message(reason: RejectReason, payload: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload)
    invalid = caught.value
    assert invalid.reason is reason
    entry = published(rejection_result(invalid, None, invalid.server_handle,
                                       invalid.request_id))
    assert (entry["status"], entry["error"]["kind"]) == ("rejected", "invalid_message")


@pytest.mark.parametrize("reason", [RejectReason.JOB_REJECTED, RejectReason.UNPARSEABLE])
def test_dispatcher_result_for_a_message_kubernetes_refused(reason: RejectReason) -> None:
    message = parse_message('{"server_handle": "web-7", "is_recovery": true}').with_identity()
    invalid = InvalidMessage(reason, "the API refused the Job: 422 Invalid", "web-7")
    entry = published(rejection_result(invalid, message, message.server_handle,
                                       message.request_id))
    assert (entry["action"], entry["mode"]) == ("recovery", "run")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | st.dictionaries(st.sampled_from(["server_handle", "request_id", "is_recovery",
                                          "force_reinstall", "plan", "x"]),
                         _json_leaf, max_size=5).map(lambda d: json.dumps(d).encode()))
def test_whatever_the_payload_a_rejection_matches_the_schema(raw: bytes) -> None:
    try:
        parse_message(raw)
    except InvalidMessage as invalid:
        if invalid.server_handle or invalid.request_id:  # only then is a result written
            published(rejection_result(invalid, None, invalid.server_handle,
                                       invalid.request_id))


# -- a plan ---------------------------------------------------------------------------------
def _plan_events() -> list[dict[str, Any]]:
    changed = {"changed": True, "diff": [{"before": "", "after_header": "/etc/app.conf",
                                          "after": f"password={SECRET}\n" * 400}]}
    return [
        {"event": "runner_on_ok", "event_data": {"task": "Write the config", "role": "app",
                                                 "res": changed}},
        {"event": "runner_on_failed", "event_data": {
            "task": "Install Docker", "role": "docker", "ignore_errors": True,
            "res": {"msg": f"python3-apt must be installed ({SECRET})"}}},
    ]


def test_a_plan_result_matches_the_schema_with_secrets_masked() -> None:
    from runner_image.plan import PlanCollector

    collector = PlanCollector(Redactor([SECRET]))
    for event in _plan_events():
        collector(event)
    entry = runner_entry(out.planned(PlayRecap(ok=3, changed=1), collector.plan()),
                         mode=RunMode.PLAN, redact=Redactor([SECRET]))
    assert entry["status"] == "planned" and entry["error"] is None and entry["mode"] == "plan"
    assert [(t["task"], t["verdict"]) for t in entry["plan"]["tasks"]] == [
        ("Write the config", "would_change"), ("Install Docker", "unknown")]
    assert SECRET not in json.dumps(entry)
    assert (entry["plan"]["would_change"], entry["plan"]["unknown"]) == (1, 1)


def test_a_run_result_has_no_plan() -> None:
    entry = runner_entry(out.succeeded(PlayRecap(ok=1), {}))
    assert entry["plan"] is None
