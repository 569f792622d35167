"""The Kubernetes side of dispatcher tests: an emulator process and a kubelet to drive it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client

from tests.k8s_emulator import EmulatorProcess, emulator_process
from tests.k8s_emulator.kubelet import Kubelet

NAMESPACE = "infra"


@dataclass
class Kube:
    emulator: EmulatorProcess
    kubeconfig: Path
    api_client: kubernetes.client.ApiClient

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.api_client)

    @property
    def kubelet(self) -> Kubelet:
        return Kubelet(self.api_client)

    def jobs(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return self.emulator.control.objects("jobs", namespace)

    def everything(self) -> str:
        """Every stored object, as text, for secret scans."""
        return json.dumps({r: self.emulator.control.objects(r) for r in
                           ("jobs", "pods", "events", "configmaps")})


@contextlib.contextmanager
def kube(tmp_path: Path, **options: Any) -> Iterator[Kube]:
    with emulator_process(**options) as emulator:
        config = emulator.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        client = emulator.api_client()
        try:
            yield Kube(emulator, config, client)
        finally:
            client.close()

