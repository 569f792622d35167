"""A Kubernetes API emulator for tests, served over real HTTP and used through the
official `kubernetes` client.

Emulated: batch/v1 Jobs (+status) and core/v1 Pods (+status, log, binding, eviction),
Secrets, ConfigMaps and Events, namespaced and cluster-wide; create / get / list / update /
patch (merge, strategic merge, JSON patch, apply) / delete / deletecollection / watch;
Status error bodies with the API server's reasons and texts; name, label, annotation and
Job/Pod spec validation; server-set metadata, a global resourceVersion with optimistic
concurrency; label and field selectors; paginated lists with consistent snapshots; watches
from a resourceVersion with a bounded history (410 Expired past it), bookmarks and timeouts;
finalizers, propagation policies and ownerReference garbage collection; fault injection,
latency, dropped connections and outages; an optional built-in Job controller.

Not emulated: authentication, RBAC, admission plugins (quotas, ServiceAccount tokens,
namespace lifecycle - every namespace exists), scheduling decisions, graceful pod
termination, the TTL-after-finished controller, managedFields and real server-side apply
(apply is a strategic merge), Table printing of kinds other than Jobs, Pods and Events
(`printing.py`; watches are never Tables), protobuf/CBOR/YAML request
bodies (so kubectl can read - get, describe, logs - but not write), any other resource type.

Usage:

    with running_emulator() as emu:                  # background thread of this process
        batch = kubernetes.client.BatchV1Api(emu.api_client())
        emu.inject(verb="create", resource="jobs", status=503, count=2)
        Kubelet(emu.api_client()).succeed("ns", "job-name", log="done\n")

    with emulator_process(controller_mode="succeed") as proc:   # its own process
        write_kubeconfig(tmp_path / "kubeconfig", proc.url)  # for load_kube_config
        proc.control.compact(); proc.down(); proc.up()

`kubelet.Kubelet` plays Job controller, scheduler and kubelet over HTTP; the built-in auto
controller (`controller_mode` / `configure_controller`) does the same without a driver.
"""

from .clientconfig import api_client, configuration, write_kubeconfig
from .controller import ControllerConfig
from .core import EmulatorConfig
from .faults import FaultRule
from .runtime import (
    Emulator,
    EmulatorControl,
    EmulatorProcess,
    emulator_process,
    running_emulator,
)

__all__ = [
    "ControllerConfig",
    "Emulator",
    "EmulatorConfig",
    "EmulatorControl",
    "EmulatorProcess",
    "FaultRule",
    "api_client",
    "configuration",
    "emulator_process",
    "running_emulator",
    "write_kubeconfig",
]
