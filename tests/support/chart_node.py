"""The node stand-in (tests/support/node/) widened for a Deployment's pods and for the
chart's ``helm test`` pods: what a chart install needs beyond Job pods.

- ``restartPolicy: Always`` pods run (the dispatcher's Deployment). A container that exits is
  reported terminated, not restarted: no CrashLoopBackOff here; a test that sees it fails.
- ``readinessProbe.httpGet`` is probed as the kubelet does (initialDelaySeconds,
  periodSeconds, timeoutSeconds, success/failureThreshold, on the pod's IP, 127.0.0.1): the
  pod is Ready only while its probe passes, so the Deployment's rollout, the EndpointSlice
  and the dispatcher's own ``infra_service_ready`` gauge (set when ``/readyz`` is asked) follow the
  real process. A failed probe is an ``Unhealthy`` Event, as the kubelet writes it.
  Liveness and startup probes are not run.
- Service names: there is no cluster DNS nor kube-proxy. Each container gets ``/etc/hosts``
  entries (``podman --add-host``) mapping ``<svc>``, ``<svc>.<ns>``, ``<svc>.<ns>.svc`` and
  ``<svc>.<ns>.svc.cluster.local`` to 127.0.0.1 for every Service of its namespace whose
  ports each reach the same port number of its pods (``targetPort``, resolved by name in
  the selected pods' containers): on the host network that is exactly where kube-proxy
  would deliver them. Services that remap a port get no entry (their names do not
  resolve, and the pod says so).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlane, add_user
from tests.support.node import HOST_IP, Node, PodWorker, Unsupported

Obj = dict[str, Any]


@dataclass
class ProbingPodWorker(PodWorker):
    probe_ready: bool = False

    @property
    def _probe(self) -> Obj | None:
        probe = self.container.get("readinessProbe")
        return dict(probe) if probe else None

    def _supported(self) -> None:
        spec = self.pod["spec"]
        if len(spec["containers"]) != 1 or spec.get("initContainers"):
            raise Unsupported("the node stand-in runs pods of exactly one container and no "
                               "init containers")
        for mount in self.container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise Unsupported(f"volume mount {mount['name']}: subPath is not supported")
        probe = self._probe
        if probe is not None and "httpGet" not in probe:
            raise Unsupported("the node stand-in runs httpGet readiness probes only")

    # -- readiness ------------------------------------------------------------------------
    def _condition(self, kind: str, status: bool, reason: str | None = None,
                   message: str | None = None) -> Obj:
        if kind in ("Ready", "ContainersReady") and self._probe is not None:
            status = status and self.probe_ready
        return super()._condition(kind, status, reason, message)

    def _status(self) -> Obj:
        status = super()._status()
        if self._probe is not None:
            container = status["containerStatuses"][0]
            container["ready"] = bool(container["ready"] and self.probe_ready)
        return status

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise Unsupported(f"probe port {port!r} is not a port of the container")

    def _http_probe(self, probe: Obj) -> tuple[bool, str]:
        get = probe["httpGet"]
        url = (f"{get.get('scheme', 'HTTP').lower()}://{get.get('host') or HOST_IP}:"
               f"{self._port(get['port'])}{get.get('path', '/')}")
        try:
            with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as reply:  # noqa: S310
                code = reply.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        except OSError as exc:
            return False, f"Get \"{url}\": {exc}"
        if 200 <= code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {code}"

    def _wait(self, process: Any) -> None:
        """The parent's wait (deletion: SIGTERM, grace, SIGKILL) with readiness probing."""
        probe = self._probe
        if probe is None:
            super()._wait(process)
            return
        period = float(probe.get("periodSeconds", 10))
        success_needed = int(probe.get("successThreshold", 1))
        failure_needed = int(probe.get("failureThreshold", 3))
        next_probe = time.monotonic() + float(probe.get("initialDelaySeconds", 0))
        successes = failures = 0
        stopping = False
        while process.poll() is None:
            if self.gone.is_set() or self.node.closing.is_set():
                return
            stopping = self._stop_if_deleting(stopping)
            if not stopping and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + period
                ok, why = self._http_probe(probe)
                successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
                if not ok:
                    self.node.event(self.pod, "Warning", "Unhealthy",
                                    f"Readiness probe failed: {why}")
                ready = (successes >= success_needed if not self.probe_ready
                         else failures < failure_needed)
                if ready != self.probe_ready:
                    self.probe_ready = ready
                    self._write_status()
            self.wake.wait(0.2)
            self.wake.clear()

    # -- Service names --------------------------------------------------------------------
    def _create_command(self, name: str, volumes: list[str], env: dict[str, str]
                        ) -> tuple[list[str], dict[str, str]]:
        cmd, process_env = super()._create_command(name, volumes, env)
        assert isinstance(self.node, ChartNode)
        hosts = [arg for host in self.node.service_names(self.namespace)
                 for arg in ("--add-host", f"{host}:{HOST_IP}")]
        cmd[2:2] = hosts
        return cmd, process_env


class ChartNode(Node):
    """A node whose pods are ``ProbingPodWorker``s (see the module docstring)."""

    worker_class = ProbingPodWorker

    def service_names(self, namespace: str) -> list[str]:
        """Names that cluster DNS would give a Service whose every port kube-proxy would
        deliver to the same port number of its pods (their IP is the host's 127.0.0.1
        here). The EndpointSlices cannot say it: the API refuses loopback addresses in
        them, so the controller never writes these pods' endpoints."""
        services = json.loads(self.cp.kubectl("-n", namespace, "get", "services", "-o",
                                              "json").stdout)["items"]
        pods = json.loads(self.cp.kubectl("-n", namespace, "get", "pods", "-o",
                                          "json").stdout)["items"]
        names: list[str] = []
        for service in services:
            selector = service["spec"].get("selector") or {}
            backends = [p for p in pods if selector and selector.items()
                        <= (p["metadata"].get("labels") or {}).items()]
            same = True
            for port in service["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if isinstance(target, int) or str(target).isdigit():
                    numbers = {int(target)}
                else:
                    numbers = {int(declared["containerPort"]) for pod in backends
                               for container in pod["spec"]["containers"]
                               for declared in container.get("ports") or []
                               if declared.get("name") == target}
                same = same and numbers <= {port["port"]}
            if same:
                svc = service["metadata"]["name"]
                names += [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc",
                          f"{svc}.{namespace}.svc.cluster.local"]
        return names


@contextlib.contextmanager
def running_chart_node(cp: ControlPlane, name: str, taints: list[Obj] | None = None,
                       mounts: Mapping[str, Path] | None = None) -> Iterator[ChartNode]:
    """As tests.support.node.running_node, with a ChartNode."""
    add_user(cp, name, f"system:node:{name}", ("system:nodes",))
    node = ChartNode(cp, name, mounts, taints=taints)
    try:
        yield node.start()  # type: ignore[misc]
    finally:
        node.stop()
        shutil.rmtree(node.directory, ignore_errors=True)
