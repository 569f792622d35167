"""One test's view of the real control plane: its namespace, a ServiceAccount with exactly the
dispatcher's grants reached through the fault proxy, the status node its runner pods are
bound to, and reads of what the API server stores.

    env.dispatcher_env()        # DISPATCHER_KUBECONFIG / _NAMESPACE / _JOB_NODE_SELECTOR
    env.jobs()                  # the namespace's Jobs as the API server stores them
    env.kubelet.fail(env.namespace, job_name, exit_code=11, message="...")
    env.inject("create", "jobs", status=500, count=3)
    env.api_down(); env.api_up()   # the real kube-apiserver killed, then started again
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client

from dispatcher.kube.access import REQUIRED
from tests.support.controlplane import ControlPlane
from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.status_node import StatusKubelet, StatusNode, _configuration

ACCOUNT = "dispatcher"
Obj = dict[str, Any]


def grant_dispatcher(cp: ControlPlane, namespace: str, account: str = ACCOUNT) -> str:
    """A ServiceAccount with exactly the dispatcher's grants in ``namespace`` (the list the
    chart's Role grants, dispatcher/kube/access.py); a token of it."""
    rules: dict[tuple[str, str], list[str]] = {}
    for grant in REQUIRED:
        rules.setdefault((grant.group, grant.resource), []).append(grant.verb)
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": account},
         "rules": [{"apiGroups": [g], "resources": [r], "verbs": v}
                   for (g, r), v in rules.items()]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": account},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
    ]
    cp.kubectl("-n", namespace, "create", "-f", "-",
               stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return cp.kubectl("-n", namespace, "create", "token", account, "--duration",
                      "2h").stdout.strip()


@dataclass
class KubeEnv:
    cp: ControlPlane
    namespace: str
    proxy: FaultProxy
    node: StatusNode
    kubeconfig: Path
    api_client: kubernetes.client.ApiClient

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.api_client)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api_client)

    @property
    def kubelet(self) -> StatusKubelet:
        return StatusKubelet(self.node)

    def dispatcher_env(self) -> dict[str, str]:
        return {"DISPATCHER_KUBECONFIG": str(self.kubeconfig),
                "DISPATCHER_NAMESPACE": self.namespace,
                "DISPATCHER_JOB_NODE_SELECTOR": json.dumps(self.node.selector),
                "DISPATCHER_JOB_TOLERATIONS": json.dumps(self.node.tolerations)}

    def objects(self, resource: str) -> list[Obj]:
        """``jobs``, ``pods``, ``events`` (core/v1) or ``configmaps`` of the namespace."""
        listed = {"jobs": lambda: self.batch.list_namespaced_job(self.namespace,
                                                                 _preload_content=False),
                  "pods": lambda: self.core.list_namespaced_pod(self.namespace,
                                                                _preload_content=False),
                  "events": lambda: self.core.list_namespaced_event(self.namespace,
                                                                    _preload_content=False),
                  "configmaps": lambda: self.core.list_namespaced_config_map(
                      self.namespace, _preload_content=False)}[resource]()
        items: list[Obj] = json.loads(listed.data)["items"]
        return items

    def jobs(self) -> list[Obj]:
        return self.objects("jobs")

    def everything(self) -> str:
        """Every object of the namespace a secret could leak into, as text."""
        return json.dumps({r: self.objects(r) for r in ("jobs", "pods", "events",
                                                         "configmaps")})

    def inject(self, verb: str | None = None, resource: str | None = None, **fault: Any) -> None:
        self.proxy.inject(verb, resource, **fault)

    def api_down(self) -> None:
        self.cp.kill("kube-apiserver")

    def api_up(self) -> None:
        self.cp.restart("kube-apiserver")


@contextlib.contextmanager
def kube_env(cp: ControlPlane, namespace: str, node: StatusNode, directory: Path
             ) -> Iterator[KubeEnv]:
    token = grant_dispatcher(cp, namespace)
    with fault_proxy(cp) as proxy:
        kubeconfig = Path(proxy.kubeconfig(str(directory / "dispatcher.kubeconfig"), token,
                                           namespace))
        api_client = kubernetes.client.ApiClient(_configuration(cp))
        try:
            yield KubeEnv(cp, namespace, proxy, node, kubeconfig, api_client)
        finally:
            api_client.close()
