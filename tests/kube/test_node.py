"""The node stand-in (tests/support/node.py) against the real control plane: the real Job
controller creates the pods, the real scheduler binds them to the node, and what the node
writes back is what the Job controller acts on. Every assertion reads the API (kubectl or
JSON), never the node's internals; the container output comes from ``log_of`` (the API's
pods/log would need a kubelet port)."""

from __future__ import annotations

import base64
import fcntl
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.hosts import podman, podman_env
from tests.support.node import LEASE_SECONDS, Node, running_node

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/infra-python-base:bookworm"  # python3 and a shell, built by debootstrap
NODE = "node-1"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def image() -> str:
    with open(Path(tempfile.gettempdir()) / "infra-service-image-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the lock tests/support/images.py builds under
        if podman("image", "exists", IMAGE, check=False).returncode != 0:
            subprocess.run([str(REPO / "scripts" / "build-images.sh"), "python"], check=True,
                           env=podman_env(), timeout=900)
    return IMAGE


# -- building restricted-compliant Jobs ------------------------------------------------------

def job(name: str, script: str, image: str = IMAGE, *, backoff_limit: int = 0,
        env: list[Obj] | None = None, token: bool = False, **spec: Any) -> Obj:
    container: Obj = {
        "name": "main", "image": image, "command": ["sh", "-c", script],
        "env": env or [], "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}}
    pod_spec: Obj = {
        "restartPolicy": "Never", "automountServiceAccountToken": token,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff_limit, "template": {"spec": pod_spec}, **spec}}


def create(cp: ControlPlane, namespace: str, obj: Obj) -> None:
    cp.kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(obj))


def pods_of(cp: ControlPlane, namespace: str, job_name: str) -> list[Obj]:
    listing: Any = cp.get(f"/api/v1/namespaces/{namespace}/pods"
                          f"?labelSelector=job-name%3D{job_name}")
    return list(listing["items"])


def job_obj(cp: ControlPlane, namespace: str, name: str) -> Obj:
    found: Any = cp.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    return dict(found)


def finished(cp: ControlPlane, namespace: str, name: str) -> Obj | None:
    """The Job's Complete or Failed condition, once the Job controller set it."""
    for condition in job_obj(cp, namespace, name).get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return dict(condition)
    return None


def explain(cp: ControlPlane, node: Node, namespace: str) -> str:
    """What a failing test prints: kubectl describe of everything, each container's log."""
    described = cp.kubectl("-n", namespace, "describe", "jobs,pods", check=False)
    pods: Any = cp.get(f"/api/v1/namespaces/{namespace}/pods")
    logs = "\n".join(f"--- log of {p['metadata']['name']}:\n"
                     f"{node.log_of(namespace, p['metadata']['name'])}" for p in pods["items"])
    return (f"\n{described.stdout}{described.stderr}\n{logs}\n"
            f"node errors: {node.errors}\n"
            f"kube-controller-manager:\n{cp.log_of('kube-controller-manager', 15)}")


def wait_for(what: str, probe: Callable[[], Any], cp: ControlPlane, node: Node,
             namespace: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.3)
    pytest.fail(f"{what}: not after {timeout:g} s{explain(cp, node, namespace)}")


def container_status(pod: Obj) -> Obj:
    return dict((pod.get("status", {}).get("containerStatuses") or [{}])[0])


# -- the node ---------------------------------------------------------------------------------

def test_the_node_registers_ready_and_renews_its_lease(control_plane: ControlPlane,
                                                       kube_node: Node) -> None:
    nodes = control_plane.kubectl("get", "nodes", "--no-headers").stdout
    assert any(line.split()[:2] == [NODE, "Ready"] for line in nodes.splitlines()), nodes
    node: Any = control_plane.get(f"/api/v1/nodes/{NODE}")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert {"cpu", "memory", "pods"} <= set(node["status"]["allocatable"])
    # The node-lifecycle controller taints a node whose Lease stops: none here.
    assert not [t for t in node["spec"].get("taints") or []
                if t["key"].startswith("node.kubernetes.io/")], node["spec"]
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
    first: Any = control_plane.get(lease_path)
    assert first["spec"]["holderIdentity"] == NODE
    assert first["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    time.sleep(LEASE_SECONDS * 2 + 0.5)
    second: Any = control_plane.get(lease_path)
    assert second["spec"]["renewTime"] > first["spec"]["renewTime"], (first, second)


def test_the_node_reads_only_what_its_pods_reference(control_plane: ControlPlane,
                                                    kube_node: Node, kube_ns: str) -> None:
    """The node runs with its own identity: the Node authorizer lets it read a Secret only
    when a pod bound to it references that Secret."""
    control_plane.kubectl("-n", kube_ns, "create", "secret", "generic", "unrelated",
                          "--from-literal=k=v")
    refused = control_plane.kubectl("-n", kube_ns, "get", "secret", "unrelated",
                                    user=NODE, check=False)
    assert refused.returncode != 0
    assert "no relationship found between node 'node-1' and this object" in refused.stderr, \
        refused.stderr


def test_the_node_lists_and_watches_again_after_its_connection_drops(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    wait_for("a watch to cut", kube_node.cut_watch, control_plane, kube_node, kube_ns,
             timeout=10)
    create(control_plane, kube_ns, job("after", "echo still here"))
    wait_for("Job after Complete", lambda: finished(control_plane, kube_ns, "after"),
             control_plane, kube_node, kube_ns)
    (pod,) = pods_of(control_plane, kube_ns, "after")
    assert kube_node.log_of(kube_ns, pod["metadata"]["name"]) == "still here\n"


# -- Jobs run to their end --------------------------------------------------------------------

def test_a_job_whose_pod_exits_0_completes(control_plane: ControlPlane, kube_node: Node,
                                           kube_ns: str, image: str) -> None:
    control_plane.kubectl("-n", kube_ns, "create", "configmap", "settings",
                          "--from-literal=greeting=hello", "--from-literal=mode=fast")
    spec = job("ok", 'echo "$GREETING from $WHO on $NODE ($APP, $CFG_mode)"', env=[
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "WHO", "value": "$(POD_NAME)"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                               "key": "greeting"}}}])
    container = spec["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]
    spec["spec"]["template"]["metadata"] = {"labels": {"app": "demo"}}
    create(control_plane, kube_ns, spec)
    wait_for("Job ok Complete", lambda: finished(control_plane, kube_ns, "ok"),
             control_plane, kube_node, kube_ns)
    jobs = control_plane.kubectl("-n", kube_ns, "get", "jobs", "--no-headers").stdout
    assert jobs.split()[:2] == ["ok", "Complete"], jobs
    (pod,) = pods_of(control_plane, kube_ns, "ok")
    name = pod["metadata"]["name"]
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert pod["status"]["podIP"] == pod["status"]["hostIP"] == "127.0.0.1"
    terminated = container_status(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed"), terminated
    assert terminated["startedAt"] <= terminated["finishedAt"]
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conditions["PodScheduled"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    expected = f"hello from {name} on {NODE} (demo, fast)\n"
    assert kube_node.log_of(kube_ns, name) == expected
    # pods/log: the real API server asks the node's log endpoint.
    assert control_plane.kubectl("-n", kube_ns, "logs", name).stdout == expected


def test_a_pod_exiting_3_carries_its_termination_message_and_fails_the_job(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    create(control_plane, kube_ns, job(
        "three", "echo 'disk full on /scratch' > /dev/termination-log; exit 3"))
    condition = wait_for("Job three Failed", lambda: finished(control_plane, kube_ns, "three"),
                         control_plane, kube_node, kube_ns)
    assert (condition["type"], condition["reason"]) == ("Failed", "BackoffLimitExceeded")
    (pod,) = pods_of(control_plane, kube_ns, "three")
    assert pod["status"]["phase"] == "Failed"
    terminated = container_status(pod)["state"]["terminated"]
    assert terminated["exitCode"] == 3, terminated
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "disk full on /scratch\n"
    jobs = control_plane.kubectl("-n", kube_ns, "get", "jobs", "--no-headers").stdout
    assert jobs.split()[:2] == ["three", "Failed"], jobs


def test_fallback_to_logs_on_error_reports_the_log_tail(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    spec = job("tail", "echo first; echo 'last words' >&2; exit 1")
    spec["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = \
        "FallbackToLogsOnError"
    create(control_plane, kube_ns, spec)
    wait_for("Job tail Failed", lambda: finished(control_plane, kube_ns, "tail"),
             control_plane, kube_node, kube_ns)
    (pod,) = pods_of(control_plane, kube_ns, "tail")
    terminated = container_status(pod)["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert terminated["message"] == "first\nlast words", terminated


def test_a_container_over_its_memory_limit_is_oom_killed(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    spec = job("hungry", "exec python3 -c 'x = bytearray(300 * 2**20)'")
    spec["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}
    create(control_plane, kube_ns, spec)
    wait_for("Job hungry Failed", lambda: finished(control_plane, kube_ns, "hungry"),
             control_plane, kube_node, kube_ns)
    (pod,) = pods_of(control_plane, kube_ns, "hungry")
    terminated = container_status(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled"), terminated


def test_a_command_that_does_not_exist_is_a_start_error(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    spec = job("nocmd", "")
    spec["spec"]["template"]["spec"]["containers"][0]["command"] = ["/no/such/program"]
    create(control_plane, kube_ns, spec)
    wait_for("Job nocmd Failed", lambda: finished(control_plane, kube_ns, "nocmd"),
             control_plane, kube_node, kube_ns)
    (pod,) = pods_of(control_plane, kube_ns, "nocmd")
    terminated = container_status(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError"), terminated
    assert "/no/such/program" in terminated["message"], terminated


def test_a_pod_failure_policy_fail_job_rule_fails_the_job_at_once(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    create(control_plane, kube_ns, job("policy", "exit 42", backoff_limit=6, podFailurePolicy={
        "rules": [{"action": "FailJob",
                   "onExitCodes": {"containerName": "main", "operator": "In",
                                   "values": [42]}}]}))
    condition = wait_for("Job policy Failed",
                         lambda: finished(control_plane, kube_ns, "policy"),
                         control_plane, kube_node, kube_ns)
    assert (condition["type"], condition["reason"]) == ("Failed", "PodFailurePolicy"), condition
    assert "exit code 42" in condition["message"], condition
    # backoffLimit 6 would have allowed retries: the rule stopped them.
    assert len(pods_of(control_plane, kube_ns, "policy")) == 1


def test_the_deadline_fails_the_job_and_the_node_stops_the_container(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    script = ("trap 'echo got SIGTERM; exit 143' TERM; echo started; "
              "while true; do sleep 0.2; done")
    create(control_plane, kube_ns, job("slow", script, activeDeadlineSeconds=5))
    pod = wait_for("the pod running", lambda: next(
        (p for p in pods_of(control_plane, kube_ns, "slow")
         if p.get("status", {}).get("phase") == "Running"), None),
        control_plane, kube_node, kube_ns)
    name = pod["metadata"]["name"]
    assert "running" in container_status(pod)["state"]
    condition = wait_for("Job slow Failed", lambda: finished(control_plane, kube_ns, "slow"),
                         control_plane, kube_node, kube_ns, timeout=45)
    assert (condition["type"], condition["reason"]) == ("Failed", "DeadlineExceeded")
    # The Job controller deleted the pod; the node stopped it with SIGTERM and completed the
    # deletion, so the pod is gone from the API and its container from podman.
    wait_for("the pod deleted", lambda: not pods_of(control_plane, kube_ns, "slow"),
             control_plane, kube_node, kube_ns, timeout=30)
    assert kube_node.log_of(kube_ns, name) == "started\ngot SIGTERM\n"
    left = podman("ps", "-a", "--filter", f"label=io.kubernetes.pod.name={name}",
                  "--format", "{{.Names}}").stdout
    assert left.strip() == "", left
    jobs = control_plane.kubectl("-n", kube_ns, "get", "jobs", "--no-headers").stdout
    assert jobs.split()[:2] == ["slow", "Failed"], jobs


# -- a pod that cannot start -----------------------------------------------------------------

def waiting_reasons(cp: ControlPlane, namespace: str, job_name: str) -> Iterator[Obj]:
    for pod in pods_of(cp, namespace, job_name):
        waiting = container_status(pod).get("state", {}).get("waiting")
        if waiting:
            yield dict(waiting)


def test_a_missing_secret_key_is_create_container_config_error_until_it_exists(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    control_plane.kubectl("-n", kube_ns, "create", "secret", "generic", "creds",
                          "--from-literal=user=deploy")
    create(control_plane, kube_ns, job("needs", 'echo "token is $TOKEN"', env=[
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x",
                                                         "optional": True}}}]))
    waiting = wait_for("CreateContainerConfigError", lambda: next(
        (w for w in waiting_reasons(control_plane, kube_ns, "needs")
         if w["reason"] == "CreateContainerConfigError"), None),
        control_plane, kube_node, kube_ns)
    assert waiting["message"] == f"couldn't find key token in Secret {kube_ns}/creds", waiting
    pods = control_plane.kubectl("-n", kube_ns, "get", "pods", "--no-headers").stdout
    assert "CreateContainerConfigError" in pods, pods
    # The kubelet keeps trying: once the key exists, the pod runs and the Job completes.
    patch = {"data": {"token": base64.b64encode(b"s3cret").decode()}}
    control_plane.kubectl("-n", kube_ns, "patch", "secret", "creds", "-p", json.dumps(patch))
    wait_for("Job needs Complete", lambda: finished(control_plane, kube_ns, "needs"),
             control_plane, kube_node, kube_ns)
    (pod,) = pods_of(control_plane, kube_ns, "needs")
    assert kube_node.log_of(kube_ns, pod["metadata"]["name"]) == "token is s3cret\n"


def test_an_image_not_in_local_storage_is_err_image_pull_then_back_off(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str) -> None:
    missing = "localhost/infra-no-such-image:1"
    create(control_plane, kube_ns, job("noimage", "true", image=missing))
    seen: set[str] = set()

    def both() -> bool:
        seen.update(w["reason"] for w in waiting_reasons(control_plane, kube_ns, "noimage"))
        return {"ErrImagePull", "ImagePullBackOff"} <= seen

    wait_for("ErrImagePull and ImagePullBackOff", both, control_plane, kube_node, kube_ns,
             timeout=30)
    (pod,) = pods_of(control_plane, kube_ns, "noimage")
    assert pod["status"]["phase"] == "Pending"
    assert finished(control_plane, kube_ns, "noimage") is None
    events = control_plane.kubectl("-n", kube_ns, "get", "events", "--field-selector",
                                   f"involvedObject.name={pod['metadata']['name']}").stdout
    assert f'Pulling image "{missing}"' in events, events
    # Deleting a pod that never started: the node reports it terminated and completes the
    # deletion (kubectl waits for the object to go).
    control_plane.kubectl("-n", kube_ns, "delete", "pod", pod["metadata"]["name"],
                          "--timeout=30s")


def test_a_pod_the_node_cannot_run_says_why(control_plane: ControlPlane, kube_node: Node,
                                           kube_ns: str, image: str) -> None:
    spec = job("restarts", "exit 1")
    spec["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    create(control_plane, kube_ns, spec)
    waiting = wait_for("CreateContainerError", lambda: next(
        (w for w in waiting_reasons(control_plane, kube_ns, "restarts")
         if w["reason"] == "CreateContainerError"), None),
        control_plane, kube_node, kube_ns)
    assert "restartPolicy Never only" in waiting["message"], waiting


# -- the service account token ----------------------------------------------------------------

WHOAMI = """
import json, os, ssl, urllib.request
base = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(base + "/token").read()
context = ssl.create_default_context(cafile=base + "/ca.crt")
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
request = urllib.request.Request(url, body.encode(), method="POST", headers={
    "Authorization": "Bearer " + token, "Content-Type": "application/json"})
info = json.load(urllib.request.urlopen(request, context=context))["status"]["userInfo"]
print(json.dumps({"namespace": open(base + "/namespace").read(),
                  "username": info["username"],
                  "pod": info["extra"]["authentication.kubernetes.io/pod-name"][0]}))
"""


def test_a_pod_calls_the_api_with_its_service_account_token(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str) -> None:
    wait_for("the default ServiceAccount", lambda: control_plane.kubectl(
        "-n", kube_ns, "get", "serviceaccount", "default", check=False).returncode == 0,
        control_plane, kube_node, kube_ns, timeout=30)
    spec = job("whoami", "exec python3 -c \"$SCRIPT\"", token=True,
               env=[{"name": "SCRIPT", "value": WHOAMI}])
    create(control_plane, kube_ns, spec)
    wait_for("Job whoami Complete", lambda: finished(control_plane, kube_ns, "whoami"),
             control_plane, kube_node, kube_ns)
    (pod,) = pods_of(control_plane, kube_ns, "whoami")
    name = pod["metadata"]["name"]
    assert json.loads(kube_node.log_of(kube_ns, name)) == {
        "namespace": kube_ns, "username": f"system:serviceaccount:{kube_ns}:default",
        "pod": name}


# -- a second node, with mounts ---------------------------------------------------------------

def test_a_second_node_runs_the_pods_bound_to_it_with_its_mounts(
        control_plane: ControlPlane, kube_node: Node, kube_ns: str, image: str,
        tmp_path: Path) -> None:
    plays = tmp_path / "plays"
    plays.mkdir()
    (plays / "site.yml").write_text("- hosts: all\n")
    taint = {"key": "infra-service.test/node", "value": "node-2", "effect": "NoSchedule"}
    spec = job("pinned", "cat /plays/site.yml; echo on $NODE", env=[
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    pod_spec = spec["spec"]["template"]["spec"]
    pod_spec["nodeSelector"] = {"kubernetes.io/hostname": "node-2"}
    pod_spec["tolerations"] = [{**taint, "operator": "Equal"}]
    try:
        with running_node(control_plane, "node-2", mounts={"/plays": plays},
                          taints=[taint]) as second:
            create(control_plane, kube_ns, spec)
            wait_for("Job pinned Complete", lambda: finished(control_plane, kube_ns, "pinned"),
                     control_plane, second, kube_ns)
            (pod,) = pods_of(control_plane, kube_ns, "pinned")
            name = pod["metadata"]["name"]
            assert pod["spec"]["nodeName"] == "node-2"
            assert second.log_of(kube_ns, name) == "- hosts: all\non node-2\n"
            assert kube_node.log_of(kube_ns, name) == ""  # node-1 watches only its own pods
            assert not second.errors, second.errors
    finally:
        control_plane.kubectl("delete", "node", "node-2", "--wait=false", check=False)
