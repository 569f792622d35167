"""The real-cluster end-to-end run (scripts/kind-e2e.sh) and offline checks of its inputs.

The run needs a working Docker engine, kind, kubectl and helm; without them it is skipped
with the reason. Its manifests are validated here either way, so they cannot rot unnoticed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.support.images import REPO

KIND_DIR = REPO / "scripts" / "kind"
SCRIPT = REPO / "scripts" / "kind-e2e.sh"
PLACEHOLDERS = {"@REDIS_IMAGE@": "redis:7.2-bookworm", "@POSTGRES_IMAGE@": "postgres:15-bookworm",
                "@TARGET_IMAGE@": "localhost/infra-service-e2e-target:e2e",
                "@RUNNER_IMAGE@": "localhost/infra-service-runner:e2e",
                "@SERVER_HANDLE@": "e2e-target-1", "@NAMESPACE@": "infra-e2e"}


def why_kind_cannot_run() -> str | None:
    """Every missing piece, or None when the run can go ahead."""
    problems = [f"{tool} is not installed" for tool in ("kind", "kubectl", "helm")
                if shutil.which(tool) is None]
    if shutil.which("docker") is None:
        problems.insert(0, "docker is not installed")
    else:
        # A docker client alone is not enough: the engine must answer.
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            problems.insert(0, "docker info did not answer within 30 s")
        else:
            if info.returncode != 0:
                lines = (info.stderr or info.stdout).strip().splitlines()
                problems.insert(0, "docker info failed, no Docker engine is running"
                                f" ({lines[-1] if lines else 'no output'})")
    return "; ".join(problems) or None


@pytest.mark.kind
def test_kind_end_to_end() -> None:
    reason = why_kind_cannot_run()
    if reason:
        pytest.skip(f"kind end-to-end needs Docker, kind, kubectl and helm: {reason}. "
                    "Run scripts/kind-e2e.sh on a machine that has them.")
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    assert "END-TO-END PASSED" in done.stdout


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("name", ["services.yaml", "prepare-job.yaml"])
def test_manifests_are_valid_kubernetes(name: str) -> None:
    text = "\n".join(line for line in (KIND_DIR / name).read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    assert not re.search(r"@[A-Z_]+@", text), "a placeholder the test does not fill"
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.25.0", strict=True)
        spec = doc["spec"]["template"]["spec"] if "template" in doc.get("spec", {}) else None
        if spec is not None:
            assert spec["automountServiceAccountToken"] is False
            # Passwords come from the Secret, never as literal values.
            for container in spec["containers"]:
                for var in container.get("env", []):
                    if "PASSWORD" in var["name"] and not var["name"].endswith("_FILE"):
                        assert "valueFrom" in var, var
