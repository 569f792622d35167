"""The chart installed by the real helm into the real API server, and a dispatcher that talks
to that API server with exactly the chart's ServiceAccount and its grants."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "infra-service"
RELEASE = "prov"


@dataclass
class Release:
    cp: ControlPlane
    namespace: str
    name: str = RELEASE

    @property
    def fullname(self) -> str:
        return f"{self.name}-infra-service"

    def helm(self, *args: str, check: bool = True, timeout: float = 180
             ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.cp.bin / "helm"), "--kubeconfig",
                               str(self.cp.kubeconfig()), "--namespace", self.namespace, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stderr}{done.stdout}")
        return done

    def install(self, values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        return self._with_values(["install", self.name, str(CHART)], values, extra)

    def upgrade(self, values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        return self._with_values(["upgrade", self.name, str(CHART)], values, extra)

    def _with_values(self, head: list[str], values: dict[str, Any], extra: tuple[str, ...]
                     ) -> subprocess.CompletedProcess[str]:
        """helm with ``values`` on its standard input; the caller checks the outcome."""
        return subprocess.run([str(self.cp.bin / "helm"), "--kubeconfig",
                               str(self.cp.kubeconfig()), "--namespace", self.namespace, *head,
                               "--values", "-", *extra], input=json.dumps(values),
                              capture_output=True, text=True, timeout=300, check=False)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.cp.kubectl("-n", self.namespace, "get", kind, name, "-o", "json").stdout
        found: dict[str, Any] = json.loads(out)
        return found

    def service_account_kubeconfig(self, directory: Path, account: str | None = None) -> Path:
        """A kubeconfig that authenticates as the chart's ServiceAccount, with a token from
        the TokenRequest API (what the pod's projected token would be)."""
        account = account or self.fullname
        token = self.cp.kubectl("-n", self.namespace, "create", "token", account,
                                "--duration", "1h").stdout.strip()
        path = directory / f"{account}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": {
                "server": self.cp.server,
                "certificate-authority": str(self.cp.pki.path("ca.crt"))}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account,
                                                     "namespace": self.namespace}}],
        }))
        path.chmod(0o600)
        return path
