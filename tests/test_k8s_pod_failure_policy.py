"""The emulator's Job podFailurePolicy (validation as the API server, FailJob applied by the
Job controller) and the kubelet's terminationMessagePolicy, over real HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.k8s_emulator import running_emulator
from tests.k8s_emulator.kubelet import Kubelet

Obj = dict[str, Any]
VERDICT_CODES = [10, 11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def client() -> Iterator[kubernetes.client.ApiClient]:
    with running_emulator() as emulator:
        api = emulator.api_client()
        yield api
        api.close()


@pytest.fixture
def batch(client: kubernetes.client.ApiClient) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(client)


@pytest.fixture
def core(client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(client)


@pytest.fixture
def kubelet(client: kubernetes.client.ApiClient) -> Kubelet:
    return Kubelet(client)


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def policy(*rules: Obj) -> Obj:
    return {"rules": list(rules)}


def fail_on(values: list[int], operator: str = "In", container: str | None = "runner") -> Obj:
    codes: Obj = {"operator": operator, "values": values}
    if container is not None:
        codes["containerName"] = container
    return {"action": "FailJob", "onExitCodes": codes}


def job(name: str, pod_failure_policy: Obj | None = None, restart: str = "Never",
        backoff: int = 0, message_policy: str | None = None) -> Obj:
    container: Obj = {"name": "runner", "image": "runner:1.0"}
    if message_policy:
        container["terminationMessagePolicy"] = message_policy
    spec: Obj = {"backoffLimit": backoff, "template": {"spec": {
        "restartPolicy": restart, "containers": [container]}}}
    if pod_failure_policy is not None:
        spec["podFailurePolicy"] = pod_failure_policy
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def causes(batch: kubernetes.client.BatchV1Api, ns: str, body: Obj) -> dict[str, str]:
    with pytest.raises(ApiException) as info:
        batch.create_namespaced_job(ns, body)
    assert info.value.status == 422
    return {c["field"]: c["message"] for c in json.loads(info.value.body)["details"]["causes"]}


def test_a_valid_policy_is_stored_and_defaults_pod_replacement(batch, ns):
    created = batch.create_namespaced_job(ns, job("ok", policy(fail_on(VERDICT_CODES))))
    assert created.spec.pod_failure_policy.rules[0].on_exit_codes.values == VERDICT_CODES
    assert created.spec.pod_replacement_policy == "Failed"


def test_policy_requires_restart_policy_never(batch, ns):
    found = causes(batch, ns, job("onfailure", policy(fail_on([1])), restart="OnFailure"))
    assert found == {"spec.template.spec.restartPolicy":
                     'Invalid value: "OnFailure": only "Never" is supported when '
                     "podFailurePolicy is specified"}


@pytest.mark.parametrize(("rule", "field", "fragment"), [
    (fail_on([0]), "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
     "must not be 0 for the In operator"),
    (fail_on([3, 2]), "spec.podFailurePolicy.rules[0].onExitCodes.values[1]",
     "must be ordered"),
    (fail_on([2, 2]), "spec.podFailurePolicy.rules[0].onExitCodes.values[1]",
     "Duplicate value"),
    (fail_on([1], operator="Is"), "spec.podFailurePolicy.rules[0].onExitCodes.operator",
     'Unsupported value: "Is"'),
    (fail_on([1], container="sidecar"),
     "spec.podFailurePolicy.rules[0].onExitCodes.containerName",
     "must be one of the container or initContainer names"),
    ({"action": "Retry", "onExitCodes": {"operator": "In", "values": [1]}},
     "spec.podFailurePolicy.rules[0].action", 'Unsupported value: "Retry"'),
    ({"action": "FailJob"}, "spec.podFailurePolicy.rules[0]",
     "specifying one of OnExitCodes and OnPodConditions is required"),
])
def test_malformed_rules_are_refused_naming_the_field(batch, ns, rule, field, fragment):
    found = causes(batch, ns, job("bad", policy(rule)))
    assert field in found, found
    assert fragment in found[field]


def test_fail_job_rule_fails_the_job_with_reason_pod_failure_policy(batch, core, kubelet, ns):
    # backoffLimit 2 would allow retries: the rule, not the backoff, ends the Job.
    batch.create_namespaced_job(ns, job("verdict", policy(fail_on(VERDICT_CODES)), backoff=2))
    pod = kubelet.fail(ns, "verdict", exit_code=11,
                       message="ssh_unreachable: web-7 did not answer on port 22")
    conditions = {c.type: c for c in batch.read_namespaced_job("verdict", ns).status.conditions}
    assert conditions["Failed"].reason == "PodFailurePolicy"
    assert conditions["Failed"].message == (
        f"Container runner for pod {ns}/{pod} failed with exit code 11 matching FailJob rule "
        "at index 0")
    terminated = core.read_namespaced_pod(pod, ns).status.container_statuses[0].state.terminated
    assert terminated.message == "ssh_unreachable: web-7 did not answer on port 22"


def test_an_exit_code_outside_the_rule_counts_towards_backoff(batch, kubelet, ns):
    batch.create_namespaced_job(ns, job("crash", policy(fail_on(VERDICT_CODES)), backoff=1))
    kubelet.fail(ns, "crash", exit_code=1)
    status = batch.read_namespaced_job("crash", ns).status
    assert status.failed == 1 and status.conditions is None


def test_fallback_to_logs_on_error_takes_the_log_tail(core, batch, kubelet, ns):
    batch.create_namespaced_job(ns, job("fallback", message_policy="FallbackToLogsOnError"))
    log = "".join(f"line {i}\n" for i in range(200)) + "Traceback: boom\n"
    pod = kubelet.fail(ns, "fallback", exit_code=1, log=log)
    message = core.read_namespaced_pod(pod, ns).status.container_statuses[0] \
        .state.terminated.message
    assert message.endswith("Traceback: boom")
    assert message.startswith("line 121")  # the last 80 lines
    # The default policy (File) leaves the message empty when nothing was written.
    batch.create_namespaced_job(ns, job("file"))
    pod = kubelet.fail(ns, "file", exit_code=1, log=log)
    assert core.read_namespaced_pod(pod, ns).status.container_statuses[0] \
        .state.terminated.message is None
