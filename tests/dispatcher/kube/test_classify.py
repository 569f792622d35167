"""Reading why a Job ended or why its pod will never start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.kube.classify import (
    ADMISSION_CAUSES,
    admission_rejection,
    awaits_pod_detail,
    disruption,
    finished_at,
    is_rbac_denial,
    job_outcome,
    job_without_pod,
    stuck_reason,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def job(*conditions: tuple[str, str], age: float = 0) -> dict:
    return {"metadata": {"creationTimestamp": ts(age)},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r,
                                       "message": f"{r} happened"} for t, r in conditions]}}


def pod(phase: str = "Pending", age: float = 0, waiting: str | None = None,
        terminated: dict | None = None, reason: str | None = None,
        unschedulable: bool = False) -> dict:
    state = {"waiting": {"reason": waiting, "message": f"{waiting} detail"}} if waiting else \
        {"terminated": terminated} if terminated else {}
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": "0/3 nodes are available"}] if unschedulable else []
    return {"metadata": {"creationTimestamp": ts(age)},
            "status": {"phase": phase, "reason": reason, "conditions": conditions,
                       "containerStatuses": [{"name": "runner", "state": state}]}}


def test_running_job_has_no_outcome() -> None:
    assert job_outcome(job(), []) is None
    assert job_outcome(job(("FailureTarget", "BackoffLimitExceeded")), []) is None


def test_complete_and_failed() -> None:
    assert job_outcome(job(("Complete", "")), []) == (True, "Completed", "runner completed")
    ok, reason, _ = job_outcome(job(("Failed", "DeadlineExceeded")), [])
    assert (ok, reason) == (False, "DeadlineExceeded")


def test_failure_reason_comes_from_the_pod() -> None:
    oom = pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    assert job_outcome(job(("Failed", "BackoffLimitExceeded")), [oom])[1] == "OOMKilled"
    evicted = pod("Failed", reason="Evicted")
    assert job_outcome(job(("Failed", "BackoffLimitExceeded")), [evicted])[1] == "Evicted"
    crashed = pod("Failed", terminated={"exitCode": 4, "reason": "Error"})
    _, reason, message = job_outcome(job(("Failed", "BackoffLimitExceeded")), [crashed])
    assert reason == "Error" and "code 4" in message


def test_fatal_waiting_reasons_are_stuck_at_once() -> None:
    found = stuck_reason(pod(waiting="CreateContainerConfigError"), NOW, 120, 600)
    assert found and found[0] == "CreateContainerConfigError"


def test_image_pull_errors_get_a_grace_period() -> None:
    assert stuck_reason(pod(waiting="ImagePullBackOff", age=10), NOW, 120, 600) is None
    assert stuck_reason(pod(waiting="ImagePullBackOff", age=130), NOW, 120, 600)[0] \
        == "ImagePullBackOff"


def test_unschedulable_after_timeout() -> None:
    assert stuck_reason(pod(age=30, unschedulable=True), NOW, 120, 600) is None
    found = stuck_reason(pod(age=601, unschedulable=True), NOW, 120, 600)
    assert found[0] == "Unschedulable" and "0/3 nodes" in found[1]


def test_running_pod_is_never_stuck() -> None:
    assert stuck_reason(pod("Running", age=10_000), NOW, 120, 600) is None


def test_job_without_pod() -> None:
    assert job_without_pod(job(age=5), NOW, 600) is None
    assert job_without_pod(job(age=700), NOW, 600)[0] == "PodNotCreated"


def test_finished_at_is_completion_or_the_failed_condition() -> None:
    done = {"status": {"completionTime": "2026-12-02T07:10:05Z", "conditions": []}}
    assert finished_at(done) == datetime(2026, 12, 2, 7, 10, 5, tzinfo=UTC)
    failed = {"status": {"conditions": [
        {"type": "FailureTarget", "status": "True", "lastTransitionTime": "2026-12-02T07:11:00Z"},
        {"type": "Failed", "status": "True", "lastTransitionTime": "2026-12-02T07:11:01Z"}]}}
    assert finished_at(failed) == datetime(2026, 12, 2, 7, 11, 1, tzinfo=UTC)
    assert finished_at({"status": {}}) is None  # still running


def test_a_failed_job_waits_for_its_pods_end_unless_the_deadline_ended_it() -> None:
    running = pod("Running")
    crashed = pod("Failed", terminated={"exitCode": 10, "reason": "Error"})
    for reason in ("BackoffLimitExceeded", "PodFailurePolicy"):
        failed = job(("Failed", reason))
        assert awaits_pod_detail(failed, [])
        assert awaits_pod_detail(failed, [running])  # its update is still on the way
        assert not awaits_pod_detail(failed, [crashed])
    assert not awaits_pod_detail(job(("Failed", "DeadlineExceeded")), [running])
    assert not awaits_pod_detail(job(("Complete", "")), [])
    assert not awaits_pod_detail(job(), [running])


# -- pods refused at admission (the Job controller's FailedCreate Events) ------------------
# Messages as the real v1.36 Job controller and API server write them (tests/kube/
# test_admission.py meets the first two live).
POD_SECURITY = ('Error creating: pods "prov-web-7-3f9c-t4svn" is forbidden: violates '
                'PodSecurity "restricted:latest": runAsUser=0 (container "runner" must not '
                'set runAsUser=0)')
QUOTA = ('Error creating: pods "prov-web-7-3f9c-t4svn" is forbidden: exceeded quota: no-pods, '
         'requested: pods=1, used: pods=0, limited: pods=0')
QUOTA_LIMITS = ('Error creating: pods "prov-web-7-3f9c-t4svn" is forbidden: failed quota: '
                'compute: must specify limits.cpu for: runner')
WEBHOOK = ('Error creating: admission webhook "validate.kyverno.svc-fail" denied the request: '
           'policy require-labels: label team is required')
VAP = ('Error creating: pods "prov-web-7-3f9c-t4svn" is forbidden: ValidatingAdmissionPolicy '
       "'no-root' with binding 'no-root' denied request: runner must not run as root")
SERVICE_ACCOUNT = ('Error creating: pods "prov-web-7-3f9c-t4svn" is forbidden: error looking '
                   'up service account infra/runner: serviceaccount "runner" not found')


@pytest.mark.parametrize(("message", "cause"), [
    (POD_SECURITY, "pod_security"), (QUOTA, "quota"), (QUOTA_LIMITS, "quota"),
    (WEBHOOK, "policy"), (VAP, "policy"), (SERVICE_ACCOUNT, "service_account")])
def test_a_pod_refused_at_admission_is_named_with_the_api_words(message: str,
                                                                 cause: str) -> None:
    found = admission_rejection(message)
    assert found is not None and found.cause == cause
    assert found.cause in ADMISSION_CAUSES
    # The API's own message, without the controller's "Error creating: " prefix.
    assert found.message == message.removeprefix("Error creating: ")
    assert found.advice  # what to do, for the log line


@pytest.mark.parametrize("message", [
    "Error creating: Internal error occurred: resource quota evaluation timed out",
    "Error creating: Timeout: request did not complete within requested timeout",
    "Error creating: the server is currently unable to handle the request",
    "Error creating: Post \"https://webhook.svc:443/validate\": dial tcp: connection refused",
    "",
])
def test_failures_that_may_pass_are_not_rejections(message: str) -> None:
    assert admission_rejection(message) is None


def test_a_dry_run_the_dispatcher_may_not_make_is_rbac_not_admission() -> None:
    """The pod dry run answered 403 by the authorizer: the Role lacks `create pods`, which
    says nothing about the runner pod."""
    denied = ('pods "prov-preflight-1-x" is forbidden: User "system:serviceaccount:infra:'
              'infra-service" cannot create resource "pods" in API group "" in the '
              'namespace "infra"')
    assert is_rbac_denial(denied)
    assert admission_rejection(denied) is None
    assert not is_rbac_denial(QUOTA)
    # The same words answered to a dry run (no prefix) classify the same way.
    assert admission_rejection(QUOTA.removeprefix("Error creating: ")).cause == "quota"


# -- disruptions and cancellations -----------------------------------------------------------
def disrupted_pod(reason: str = "EvictionByEvictionAPI", message: str = "Eviction API: evicting",
                  node: str | None = "node-3") -> dict:
    return {"metadata": {"name": "prov-web-7-3f9c-abcde", "creationTimestamp": ts(30)},
            "spec": {"nodeName": node},
            "status": {"phase": "Failed", "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": reason,
                 "message": message}]}}


def test_a_disrupted_pod_names_its_node_and_the_reason() -> None:
    text = disruption(disrupted_pod())
    assert text is not None
    assert "prov-web-7-3f9c-abcde" in text and "on node node-3" in text
    assert "EvictionByEvictionAPI: Eviction API: evicting" in text
    preempted = disruption(disrupted_pod("PreemptionByScheduler", "", node=None))
    assert preempted is not None and "PreemptionByScheduler" in preempted
    assert "before it was bound to a node" in preempted


def test_a_pod_without_the_condition_or_with_it_false_is_not_disrupted() -> None:
    assert disruption(pod("Running")) is None
    false = disrupted_pod()
    false["status"]["conditions"][0]["status"] = "False"
    assert disruption(false) is None


def test_the_runner_cancelled_exit_code_reads_cancelled() -> None:
    """Exit code 15: SIGTERM stopped the runner (its pod deleted); it published nothing."""
    killed = pod("Failed", terminated={"exitCode": 15, "reason": "Error",
                                       "message": "cancelled: the run was cancelled (SIGTERM)"})
    assert job_outcome(job(("Failed", "PodFailurePolicy")), [killed]) == (
        False, "Cancelled", "the runner was stopped by SIGTERM (its pod was deleted) before "
        "it finished: cancelled: the run was cancelled (SIGTERM)")


def test_a_missing_service_account_is_its_own_cause_with_the_command_that_fixes_it() -> None:
    found = admission_rejection(SERVICE_ACCOUNT)
    assert found is not None and found.cause == "service_account" and found.passes_on_its_own
    assert "kubectl -n infra create serviceaccount runner" in found.advice
    quota = admission_rejection(QUOTA)
    assert quota is not None and not quota.passes_on_its_own
