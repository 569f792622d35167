"""What the README promises `kubectl get jobs` prints, from a real API server (the columns
are the server's: Table printing) and the real Job controller. Its STATUS column exists from
Kubernetes 1.30; the chart's floor (1.31, see tests/deploy/test_chart_helm.py) is above that,
and tests/kube/test_kubectl_floor.py runs a 1.31 API server to show it."""

from __future__ import annotations

import json
import time
import uuid

from contracts.messages import ProvisionerMessage
from dispatcher.jobspec import JobBodyTemplate, JobFields
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.support import kubelet_writes as kubelet
from tests.support.controlplane import ControlPlane

README_COLUMNS = ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]


def _row(cp: ControlPlane, namespace: str, name: str) -> list[str]:
    lines = cp.kubectl("-n", namespace, "get", "jobs", name).stdout.splitlines()
    assert lines[0].split() == README_COLUMNS, lines
    return lines[1].split()


def test_get_jobs_prints_the_status_column_the_readme_shows(control_plane: ControlPlane,
                                                            kube_ns: str) -> None:
    cp = control_plane
    node = f"columns-node-{uuid.uuid4().hex[:8]}"
    kubelet.create_node(cp, node)
    try:
        # On this node only: another test's node (a real node stand-in) would run the pod.
        template = JobTemplateSettings(image="infra-service-runner:0.1.0",
                                       node_selector={"kubernetes.io/hostname": node})
        fields = JobFields.of(ProvisionerMessage(server_handle="web-7").with_identity())
        body = JobBodyTemplate(DispatcherSettings(namespace=kube_ns), template).render(fields)
        cp.kubectl("-n", kube_ns, "create", "-f", "-", stdin=body.decode())
        pod = kubelet.wait_for_bound_pod(cp, kube_ns, fields.name)
        started = kubelet.now()
        kubelet.running(cp, kube_ns, pod["metadata"]["name"], started, image=template.image)
        assert _row(cp, kube_ns, fields.name)[:3] == [fields.name, "Running", "0/1"]
        # The runner's "unreachable" exit: the Job fails (podFailurePolicy) and says so.
        kubelet.terminated(cp, kube_ns, pod["metadata"]["name"], started, 11,
                           message="ssh_unreachable: no SSH answer")
        deadline = time.monotonic() + 60
        row = _row(cp, kube_ns, fields.name)
        while row[1] != "Failed" and time.monotonic() < deadline:
            time.sleep(0.3)
            row = _row(cp, kube_ns, fields.name)
        job = json.loads(cp.kubectl("-n", kube_ns, "get", "job", fields.name, "-o",
                                    "json").stdout)
        assert row[:3] == [fields.name, "Failed", "0/1"], (row, job.get("status"))
    finally:
        kubelet.delete_node(cp, node)
