"""A real Prometheus (Debian's ``prometheus`` binary) on 127.0.0.1 for a test: its data in a
temporary directory, a short scrape and evaluation interval, the chart's alert rules rendered
by the real ``helm template`` for one release, and the dispatcher as a scrape target labelled
the way the Prometheus Operator labels a ServiceMonitor's targets (``job`` = the metrics
Service's name, ``namespace`` = the release's, plus ``service``, ``endpoint``, ``pod``,
``container``), so the rules' default selector finds it as it would in a cluster.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import kube_bin
from tests.support.services import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "infra-service"
BINARY = "prometheus"
KUBE_VERSION = "1.31.0"


def available() -> bool:
    return shutil.which(BINARY) is not None


@dataclass(frozen=True)
class Target:
    """One dispatcher replica as a ServiceMonitor of release ``release`` makes it."""
    address: str
    namespace: str
    release: str
    pod: str

    @property
    def job(self) -> str:
        """The metrics Service's name, which the Operator gives as ``job``."""
        return f"{self.release}-infra-service-metrics"

    def labels(self) -> dict[str, str]:
        return {"namespace": self.namespace, "service": self.job, "endpoint": "metrics",
                "pod": self.pod, "container": "dispatcher"}


def chart_rules(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule groups of the chart's PrometheusRule, rendered by ``helm template`` for
    ``release`` in ``namespace`` with ``values`` (prometheusRule.enabled is set)."""
    merged = {**values, "prometheusRule": {**values.get("prometheusRule", {}),
                                           "enabled": True}}
    done = subprocess.run(
        [str(kube_bin() / "helm"), "template", release, str(CHART), "--namespace", namespace,
         "--show-only", "templates/prometheusrule.yaml", "--values", "-",
         # helm template assumes an old cluster; the chart requires 1.31
         "--kube-version", KUBE_VERSION],
        input=json.dumps(merged), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"helm template failed:\n{done.stderr}")
    rule = yaml.safe_load(done.stdout)
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


@dataclass
class Prometheus:
    directory: Path
    targets: list[Target]
    rule_groups: list[dict[str, Any]]
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Prometheus:
        self.directory.mkdir(parents=True, exist_ok=True)
        rules = self.directory / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": self.rule_groups}))
        jobs: dict[str, list[dict[str, Any]]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(
                {"targets": [target.address], "labels": target.labels()})
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                       "evaluation_interval": self.interval},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": static}
                               for job, static in jobs.items()]}))
        check = subprocess.run(["promtool", "check", "config", str(config)],
                               capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            raise AssertionError(f"promtool check config:\n{check.stdout}{check.stderr}")
        with (self.directory / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [BINARY, f"--config.file={config}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not become ready:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",
                                        timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - 127.0.0.1
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """/api/v1/alerts: every pending or firing alert with its labels."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def running_prometheus(directory: Path, targets: list[Target],
                       rule_groups: list[dict[str, Any]]) -> Iterator[Prometheus]:
    prom = Prometheus(directory, targets, rule_groups).start()
    try:
        yield prom
    finally:
        prom.stop()
