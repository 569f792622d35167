"""scripts/cluster.sh, the README's way for a person to get the control plane and a node:
`up` prints what to export, kubectl then works and the node is Ready, `status` names every
process, `down` stops them all and removes the files."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.support.controlplane import REPO


def cluster(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts" / "cluster.sh"), *args], cwd=REPO,
                          env={**os.environ, "INFRA_CLUSTER_DIR": str(directory)},
                          capture_output=True, text=True, timeout=300, check=False)


def test_up_status_down(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    up = cluster(directory, "up")
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
        assert set(exports) == {"PATH", "KUBECONFIG"}, up.stdout
        kubectl = Path(exports["PATH"].split(":")[0]) / "kubectl"
        nodes = subprocess.run([str(kubectl), "--kubeconfig", exports["KUBECONFIG"], "get",
                                "nodes", "-o", "json"], capture_output=True, text=True,
                               check=True).stdout
        ready = {n["metadata"]["name"]: [c["status"] for c in n["status"]["conditions"]
                                         if c["type"] == "Ready"]
                 for n in json.loads(nodes)["items"]}
        assert ready == {"node-1": ["True"]}
        status = cluster(directory, "status")
        assert status.returncode == 0, status.stderr
        running = json.loads(status.stdout)["running"]
        assert running == {"etcd": True, "kube-apiserver": True, "kube-controller-manager": True,
                           "kube-scheduler": True, "node": True}
    finally:
        down = cluster(directory, "down")
    assert down.returncode == 0, down.stderr
    assert not directory.exists()
    assert cluster(directory, "status").returncode == 1
