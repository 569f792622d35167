"""The chart on the real API server with the real disruption controller, installed by the real
helm, its pods on the status node (tests/support/status_node.py: the test writes what a kubelet
would, so a dispatcher pod can be Running and not ready, as it is while Redis or the API server
is unreachable).

- A node drain evicts through the Eviction API. While every dispatcher pod is unready the
  budget has no healthy pod to spare: with ``unhealthyPodEvictionPolicy: IfHealthyBudget``
  (Kubernetes' default) the eviction is refused with 429 and ``kubectl drain`` retries forever;
  with the chart's ``AlwaysAllow`` it succeeds.
- A hook that fails leaves no NetworkPolicy behind, and after ``helm uninstall`` the only
  objects of the release left in the namespace, of every namespaced kind the API server
  lists, are the failed migration Job and its pod, kept for ``kubectl logs``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.helm_release import Release
from tests.support.kubelet_writes import now, write_status
from tests.support.status_node import StatusKubelet, StatusNode

SECRET = "chart-secrets"
# What Kubernetes itself puts in every namespace.
LEFT_BY_KUBERNETES = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}


def wait(check: Callable[[], Any], timeout: float, what: str,
         explain: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {timeout:g} s\n{explain()}")


def values(node: StatusNode, **overrides: Any) -> dict[str, Any]:
    placement = {"nodeSelector": node.selector, "tolerations": node.tolerations}
    base: dict[str, Any] = {
        "existingSecret": SECRET,
        "orchestratorSshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrain drain@test",
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        "database": {"url": "postgresql://infra@127.0.0.1:5432/infra"},
        "dispatcher": {"replicaCount": 2, **placement},
        "runner": placement,
        "networkPolicy": {"enabled": True},
        "migrations": {"enabled": False},
    }
    return {**base, **overrides}


class Chart:
    def __init__(self, cp: ControlPlane, namespace: str, node: StatusNode) -> None:
        self.cp = cp
        self.ns = namespace
        self.rel = Release(cp, namespace)
        self.kubelet = StatusKubelet(node)

    def get(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl("-n", self.ns, "get", *args, "-o", "json").stdout)

    def explain(self) -> str:
        return "\n".join([
            self.cp.kubectl("-n", self.ns, "get", "all,pdb,networkpolicies,events", "-o",
                            "wide", check=False).stdout,
            self.rel.helm("history", self.rel.name, check=False).stdout])

    def dispatcher_pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(
            "pods", "-l", "app.kubernetes.io/component=dispatcher")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")
                and p["spec"].get("nodeName") == self.kubelet.node.name]

    def run_unready(self, pod: dict[str, Any]) -> None:
        """Running, its readiness probe failing: what /readyz answers without Redis."""
        stamp = now()
        conditions = [{"type": t, "status": s, "lastTransitionTime": stamp} for t, s in (
            ("PodReadyToStartContainers", "True"), ("Initialized", "True"), ("Ready", "False"),
            ("ContainersReady", "False"), ("PodScheduled", "True"))]
        container = pod["spec"]["containers"][0]
        write_status(self.cp, self.ns, pod["metadata"]["name"], {
            "phase": "Running", "startTime": stamp, "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1", "conditions": conditions,
            "containerStatuses": [{"name": container["name"], "image": container["image"],
                                   "imageID": "", "ready": False, "started": True,
                                   "restartCount": 0,
                                   "state": {"running": {"startedAt": stamp}}}]})

    def unready_dispatchers(self, count: int) -> list[str]:
        """``count`` dispatcher pods, all Running and unready, once the disruption controller
        has counted them (no healthy pod, no disruption allowed)."""
        pods = wait(lambda: (lambda found: found if len(found) == count else None)(
            self.dispatcher_pods()), 60, f"{count} dispatcher pods on the node", self.explain)
        for pod in pods:
            self.run_unready(pod)
        pdb_name = self.rel.fullname

        def counted() -> bool:
            pdb = self.get("pdb", pdb_name)
            status = pdb.get("status") or {}
            return bool(status.get("observedGeneration") == pdb["metadata"]["generation"]
                        and status.get("expectedPods") == count
                        and status.get("currentHealthy") == 0
                        and status.get("disruptionsAllowed") == 0)
        wait(counted, 60, "the budget counting the unready pods", self.explain)
        return [p["metadata"]["name"] for p in pods]

    def evict(self, pod: str) -> subprocess.CompletedProcess[str]:
        """What `kubectl drain` sends for each pod of the node."""
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": pod, "namespace": self.ns}}
        return self.cp.kubectl("create", "--raw",
                               f"/api/v1/namespaces/{self.ns}/pods/{pod}/eviction", "-f", "-",
                               stdin=json.dumps(eviction), check=False)

    def changes(self, pod: str, since: str, seconds: int = 5) -> list[dict[str, Any]]:
        """Every version the pod went through after resourceVersion ``since``, read from a
        watch: the status node completes a deletion within a second, so a get after the
        eviction may find the pod gone already."""
        raw = self.cp.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{self.ns}/pods?watch=1&resourceVersion={since}"
            f"&fieldSelector=metadata.name%3D{pod}&timeoutSeconds={seconds}",
            timeout=seconds + 30).stdout
        return [json.loads(line)["object"] for line in raw.splitlines() if line.strip()]

    def left(self) -> set[tuple[str, str]]:
        """Every object in the namespace, of every namespaced kind the API server lists."""
        kinds = self.cp.kubectl("api-resources", "--namespaced=true", "--verbs=list",
                                "-o", "name").stdout.split()
        # Events record what happened; they are no object of the release.
        kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
        items = self.get(",".join(kinds))["items"]
        return {(o["kind"], o["metadata"]["name"]) for o in items}


@pytest.fixture
def chart(control_plane: ControlPlane, kube_ns: str, status_node: StatusNode) -> Iterator[Chart]:
    found = Chart(control_plane, kube_ns, status_node)
    control_plane.kubectl("-n", kube_ns, "create", "secret", "generic", SECRET,
                          "--from-literal=ssh-private-key=unused")
    yield found
    found.rel.helm("uninstall", found.rel.name, "--wait", check=False)


def test_a_drain_evicts_unready_dispatcher_pods(chart: Chart, status_node: StatusNode) -> None:
    started = time.monotonic()
    refused = values(status_node, podDisruptionBudget={
        "unhealthyPodEvictionPolicy": "IfHealthyBudget"})
    done = chart.rel.install(refused)
    assert done.returncode == 0, done.stderr
    first, second = chart.unready_dispatchers(2)
    # Kubernetes' default: no healthy pod to spare, the drain is refused and would hang.
    blocked = chart.evict(first)
    assert blocked.returncode != 0, blocked.stdout
    assert "disruption budget" in blocked.stderr, blocked.stderr

    # The chart's default.
    done = chart.rel.upgrade(values(status_node))
    assert done.returncode == 0, done.stderr
    pdb = chart.get("pdb", chart.rel.fullname)
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", pdb["spec"]
    chart.unready_dispatchers(2)
    before = chart.get("pod", first)["metadata"]["resourceVersion"]
    evicted = chart.evict(first)
    assert evicted.returncode == 0, f"{evicted.stderr}\n{chart.explain()}"
    versions = chart.changes(first, before)
    deleting = [p for p in versions if p["metadata"].get("deletionTimestamp")]
    assert deleting, [p["metadata"] for p in versions]
    assert any(c["type"] == "DisruptionTarget" and c["reason"] == "EvictionByEvictionAPI"
               for p in deleting for c in p["status"].get("conditions") or []), \
        [p["status"] for p in deleting]
    # ...and the other one too: a drain of a node holding both replicas completes.
    evicted = chart.evict(second)
    assert evicted.returncode == 0, f"{evicted.stderr}\n{chart.explain()}"
    print(f"\ndrain test {time.monotonic() - started:.1f} s")


def test_a_failed_hook_leaves_only_its_job_after_uninstall(chart: Chart,
                                                           status_node: StatusNode) -> None:
    """The migration hook fails (PostgreSQL refused it): its NetworkPolicy, a hook that
    succeeded, is deleted all the same, the Job and its pod stay for `kubectl logs`, and
    nothing else of the release outlives `helm uninstall`."""
    started = time.monotonic()
    before = chart.left()
    migrate = f"{chart.rel.fullname}-migrate"
    failing = values(status_node, migrations={"enabled": True, "backoffLimit": 0})
    failed_pods: list[str] = []

    def fail_the_migration() -> None:
        failed_pods.append(chart.kubelet.fail(chart.ns, migrate, exit_code=1,
                                              message="connection refused"))
    runner = threading.Thread(target=fail_the_migration, daemon=True)
    runner.start()
    done = chart.rel.install(failing, "--timeout", "60s")
    runner.join(30)
    assert done.returncode != 0, done.stdout
    assert "pre-install" in done.stderr and migrate in done.stderr, done.stderr
    policies = [n["metadata"]["name"] for n in chart.get("networkpolicies")["items"]]
    assert policies == [], f"hook policies outlived a failed hook: {policies}"

    uninstalled = chart.rel.helm("uninstall", chart.rel.name, "--wait", "--timeout", "60s",
                                 check=False)
    assert uninstalled.returncode == 0, uninstalled.stderr
    kept = {("Job", migrate), *(("Pod", name) for name in failed_pods)}
    left = wait(lambda: (lambda found: found if found <= kept else None)(
        chart.left() - before), 30, "only the failed hook Job left", chart.explain)
    assert left == kept, left
    assert before <= LEFT_BY_KUBERNETES | {("Secret", SECRET)}, before
    print(f"\nfailed hook test {time.monotonic() - started:.1f} s")


def test_a_failed_helm_test_leaves_only_its_pod_after_uninstall(
        chart: Chart, status_node: StatusNode) -> None:
    """`helm test` with the Redis check failing: every test NetworkPolicy is deleted, the
    failed pod stays for `kubectl logs`, and it is all `helm uninstall` leaves behind."""
    started = time.monotonic()
    before = chart.left()
    done = chart.rel.install(values(status_node))
    assert done.returncode == 0, done.stderr
    outcome = {"dispatcher": 0, "postgres": 0, "redis": 1}
    answered: dict[str, str] = {}
    stop = threading.Event()

    def kubelet() -> None:
        while not stop.is_set():
            for pod in chart.get("pods", "-l", "app.kubernetes.io/component=test")["items"]:
                check = pod["metadata"]["labels"]["infra-service.io/helm-test"]
                if check not in answered and pod["spec"].get("nodeName"):
                    name = pod["metadata"]["name"]
                    answered[check] = name
                    chart.kubelet.run(chart.ns, name)
                    chart.kubelet.terminate(chart.ns, name, outcome[check])
            time.sleep(0.2)
    thread = threading.Thread(target=kubelet, daemon=True)
    thread.start()
    try:
        tested = chart.rel.helm("test", chart.rel.name, "--timeout", "60s", check=False)
    finally:
        stop.set()
        thread.join(10)
    assert tested.returncode != 0, tested.stdout
    assert "redis" in answered, (answered, tested.stderr)
    policies = [n["metadata"]["name"] for n in chart.get("networkpolicies")["items"]]
    assert not [p for p in policies if "-test-" in p], policies

    uninstalled = chart.rel.helm("uninstall", chart.rel.name, "--wait", "--timeout", "60s",
                                 check=False)
    assert uninstalled.returncode == 0, uninstalled.stderr
    kept = {("Pod", answered["redis"])}
    left = wait(lambda: (lambda found: found if found <= kept else None)(
        chart.left() - before), 30, "only the failed test pod left", chart.explain)
    assert left == kept, (left, tested.stdout, tested.stderr)
    print(f"\nfailed helm test {time.monotonic() - started:.1f} s: {tested.stderr.strip()}")
