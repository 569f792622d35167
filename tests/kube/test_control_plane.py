"""The control plane the suite runs against is the real, pinned one, and enforces what a
production cluster does: RBAC, PodSecurity, its own TLS."""

from __future__ import annotations

import json
import subprocess
import urllib.error

import pytest

from tests.support.controlplane import ControlPlane, add_user

KUBE_VERSION = "v1.36.3"


def test_every_component_reports_the_pinned_release(control_plane: ControlPlane) -> None:
    assert control_plane.get("/version")["gitVersion"] == KUBE_VERSION  # type: ignore[index]
    for binary in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        out = subprocess.run([str(control_plane.bin / binary), "--version"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"Kubernetes {KUBE_VERSION}", (binary, out)
    client = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert client["serverVersion"]["gitVersion"] == KUBE_VERSION
    helm = subprocess.run([str(control_plane.bin / "helm"), "version", "--short"],
                          capture_output=True, text=True, check=True).stdout
    assert helm.startswith("v3."), helm


def test_the_namespace_enforces_restricted_pod_security(control_plane: ControlPlane,
                                                        kube_ns: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
           "spec": {"containers": [{"name": "c", "image": "x",
                                    "securityContext": {"privileged": True}}]}}
    refused = control_plane.kubectl("-n", kube_ns, "create", "-f", "-", check=False,
                                    stdin=json.dumps(pod))
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr


def test_an_identity_without_grants_is_refused(control_plane: ControlPlane,
                                               kube_ns: str) -> None:
    add_user(control_plane, "nobody", "nobody")
    refused = control_plane.kubectl("-n", kube_ns, "get", "jobs", user="nobody", check=False)
    assert refused.returncode != 0
    assert 'User "nobody" cannot list resource "jobs"' in refused.stderr, refused.stderr
    with pytest.raises(urllib.error.HTTPError) as caught:
        control_plane.get(f"/apis/batch/v1/namespaces/{kube_ns}/jobs", user="nobody")
    assert caught.value.code == 403
