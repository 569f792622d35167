"""A node for the real control plane (tests/support/controlplane.py): it plays the kubelet's
part, and only that, running each pod bound to it as a podman container.

    with running_node(cp, "node-1", mounts={"/plays": plays_dir}) as node:
        ...                               # Jobs created now get their pods run
        node.log_of(namespace, pod_name)  # the container's output (kubectl logs works too)

``mounts`` are host directories the node adds read-only to every container (what a
ConfigMap volume would carry, e.g. the tests' small plays).

What is real: everything around the node. The Job controller creates the pods, the scheduler
binds them to this Node, the Node authorizer and NodeRestriction admission decide what the
node may read and write (it authenticates as ``system:node:<name>`` in ``system:nodes``),
the node-lifecycle controller watches its Lease, the TokenRequest API signs service account
tokens, and the Job controller reads the pod statuses written here to count successes and
failures, apply podFailurePolicy, backoffLimit and activeDeadlineSeconds.

What stands in for the kubelet, and how it differs:
- Registration: the Node object (capacity and allocatable from this machine, the Ready
  condition, kubelet version, optional taints as ``--register-with-taints``; its only address
  is InternalIP 127.0.0.1, as the API server would look a Hostname up in DNS) is created
  once and its Ready condition refreshed every ``STATUS_SECONDS``; the Lease in
  ``kube-node-lease`` is renewed every ``LEASE_SECONDS``. ``start()`` returns once the
  node-lifecycle controller has lifted the ``not-ready`` taint admission puts on a new Node.
- Pods: listed and watched across namespaces with ``spec.nodeName=<node>`` (relisted on 410
  Gone or a dropped connection). Exactly one container and no init containers; volumes are
  emptyDir (a tmpfs), secret, configMap and projected (serviceAccountToken, configMap,
  secret, downwardAPI), mounted read-only from files written by the node. A pod the node
  cannot run stays waiting with ``CreateContainerError`` and a message saying why.
- Containers: ``podman create`` + ``podman start --attach`` of the pod's image (local images
  only, whatever the pull policy: an image not in podman's storage is ``ErrImagePull`` then
  ``ImagePullBackOff``, as no registry is reachable), the pod's user and groups (and the
  runAsNonRoot check), read-only root when asked, capabilities as in the securityContext, no
  privilege escalation, the memory limit (``OOMKilled`` from the kernel's notification, see
  ``PodMemory``), and the HOST network (no pod network, no Service addresses: processes use
  127.0.0.1). ``restartPolicy: Never`` only (Job pods); no CPU limits, probes, lifecycle
  hooks, image pulls or token refresh.
- Environment: value, secretKeyRef / configMapKeyRef (optional or not), fieldRef (name,
  namespace, uid, labels['x'], annotations['x'], spec.nodeName, spec.serviceAccountName,
  status.podIP, status.hostIP), envFrom, ``$(VAR)`` expansion, read with the node's own
  credentials; an unresolvable reference leaves the container waiting with
  ``CreateContainerConfigError`` and the kubelet's message. ``KUBERNETES_SERVICE_HOST`` is
  127.0.0.1 and ``KUBERNETES_SERVICE_PORT`` the API server's port: that is what stands in
  for the ``kubernetes`` Service.
- Status: pods/status is written as the kubelet writes it (phase, container states with
  exit code, reason, termination message or log tail, times, the kubelet's conditions,
  hostIP/podIP 127.0.0.1). Deletion: SIGTERM, the grace period, SIGKILL, the final status,
  then DELETE with ``gracePeriodSeconds=0``. Events: Pulling, Failed, BackOff, Created,
  Started, Killing.
- Logs: the container's output goes to a file; ``log_of`` reads it, and the node serves
  the kubelet's ``/containerLogs`` endpoint on 127.0.0.1 (the port in its status), so
  ``kubectl logs`` (tail, limit, follow) works through the real API server. Nothing else
  of the kubelet's port (exec, attach, port-forward, metrics) is served.

Modules: ``agent`` (the Node: registration, Lease and status heartbeats, the pod watch),
``worker`` (one pod's life: volumes, the podman container, its status, deletion),
``environment`` (env, envFrom and ``$(VAR)`` as the kubelet resolves them), ``memory`` (the
memory limit and the kernel's OOM notification), ``logs`` (``/containerLogs``), ``api`` (the
node's own client), ``constants``.
"""

from tests.support.node.agent import Node, running_node
from tests.support.node.constants import HOST_IP, LEASE_SECONDS
from tests.support.node.worker import PodWorker, Unsupported

__all__ = ["HOST_IP", "LEASE_SECONDS", "Node", "PodWorker", "Unsupported", "running_node"]
