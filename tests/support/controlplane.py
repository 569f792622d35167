"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, built from their published Go modules by scripts/kube/build.sh.

What is real: the API server (RBAC and Node authorization, admission with PodSecurity and
ResourceQuota, service account tokens signed with its own keys, TLS with its own CA), the
controllers (Job, garbage collector, TTL-after-finished, pod GC, namespace, deployment,
replica set, disruption, resource quota, endpoint slice, service account and token, ...) and
the scheduler. What is not here: cluster DNS and kube-proxy (no Service address is ever
reached; processes are handed 127.0.0.1 addresses instead) and a kubelet (a node stands
in; see tests/support/node.py).

Used by the test session (one control plane, one namespace per test) and, through
``python -m tests.support.controlplane up|down``, by a person (scripts/cluster.sh). The same
code starts the oldest kube-apiserver the chart claims (``Build.FLOOR``) with that etcd and
without the controllers, for what the API server alone decides (tests/kube/test_kubectl_floor.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.services import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "kube" / "build.sh"
START_TIMEOUT = 90.0  # seconds for the API server to be ready; it takes 10-30 s on 2 cores
SERVICE_RANGE = "10.96.0.0/24"  # allocated to Service objects only: nothing is ever sent there
ADMIN = "admin"


class Build(StrEnum):
    """What scripts/kube/build.sh builds: the control plane with kubectl and helm, or the
    kube-apiserver of the oldest release the chart claims (scripts/kube/floor)."""

    MAIN = "main"
    FLOOR = "floor"


def kube_bin(build: Build = Build.MAIN) -> Path:
    """The directory of the pinned binaries (built on first use, cached after)."""
    done = subprocess.run([str(BUILD), build.value], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/kube/build.sh {build.value} failed:\n"
                           f"{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


# -- certificates ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "infra-service-test-ca")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(hours=1))
              .not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                           False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        _write_key(pki.path("ca.key"), ca_key)
        pki.path("ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        pki.issue("apiserver", "kube-apiserver", server=True,
                  dns=["localhost", "kubernetes", "kubernetes.default",
                       "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
                  ips=["127.0.0.1", str(next(ipaddress.ip_network(SERVICE_RANGE).hosts()))])
        # The service account signing key pair: RSA, as the API server requires.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki.path("sa.key"), sa_key)
        pki.path("sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return pki

    def issue(self, name: str, common_name: str, *, groups: tuple[str, ...] = (),
              server: bool = False, dns: list[str] | None = None,
              ips: list[str] | None = None) -> None:
        ca_key = serialization.load_pem_private_key(self.path("ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.path("ca.crt").read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
                            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server
                        else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if dns or ips:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(d) for d in dns or []]
                + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write_key(self.path(f"{name}.key"), key)
        self.path(f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


# -- the control plane ----------------------------------------------------------------------

@dataclass
class ControlPlane:
    """A running control plane; ``kubeconfig(user)`` for each identity it knows."""

    directory: Path
    bin: Path
    api_port: int
    etcd_port: int
    started_in: float = 0.0
    pids: dict[str, int] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)
    # A component run from another binary than the one in ``bin`` (the floor's API server).
    binaries: dict[str, Path] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> Pki:
        return Pki(self.directory / "pki")

    def kubeconfig(self, user: str = ADMIN) -> Path:
        return self.directory / f"{user}.kubeconfig"

    def binary(self, component: str) -> Path:
        return self.binaries.get(component, self.bin / component)

    def kubectl(self, *args: str, user: str = ADMIN, check: bool = True,
                timeout: float = 60, stdin: str | None = None
                ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.bin / "kubectl"), "--kubeconfig",
                               str(self.kubeconfig(user)), *args], capture_output=True,
                              text=True, timeout=timeout, check=False, input=stdin)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stderr}{done.stdout}")
        return done

    def ssl_context(self, user: str = ADMIN) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
        context.load_cert_chain(str(self.pki.path(f"{user}.crt")),
                                str(self.pki.path(f"{user}.key")))
        return context

    def get(self, path: str, user: str = ADMIN, timeout: float = 5) -> object:
        with urllib.request.urlopen(f"{self.server}{path}", timeout=timeout,  # noqa: S310
                                    context=self.ssl_context(user)) as response:
            return json.loads(response.read())

    def log_of(self, component: str, tail: int = 40) -> str:
        path = self.directory / f"{component}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:])

    def alive(self) -> dict[str, bool]:
        return {name: _alive(pid) for name, pid in self.pids.items()}

    # -- state on disk, for the person's up / down ---------------------------------------
    def save(self) -> None:
        (self.directory / "state.json").write_text(json.dumps({
            "bin": str(self.bin), "api_port": self.api_port, "etcd_port": self.etcd_port,
            "pids": self.pids, "started_in": self.started_in,
            "binaries": {name: str(path) for name, path in self.binaries.items()}}))

    @classmethod
    def load(cls, directory: Path) -> ControlPlane:
        state = json.loads((directory / "state.json").read_text())
        return cls(directory, Path(state["bin"]), state["api_port"], state["etcd_port"],
                   state["started_in"], state["pids"],
                   binaries={name: Path(path)
                             for name, path in state.get("binaries", {}).items()})

    def kill(self, component: str) -> None:
        """SIGKILL one component (a crash, not a shutdown)."""
        pid = self.pids[component]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def restart(self, component: str) -> None:
        """Start a killed or stopped component again with its own arguments (same ports,
        same data); for the API server, wait until it is ready."""
        if _alive(self.pids[component]):
            _terminate(self.pids[component])
        self.pids[component] = _spawn(self, component, self.args[component])
        if component == "kube-apiserver":
            _wait_ready(self)

    def stop(self) -> None:
        # Controllers first, etcd last, so nothing logs a storm of errors on the way down.
        for name in ("node", "kube-scheduler", "kube-controller-manager", "kube-apiserver",
                     "etcd"):
            pid = self.pids.get(name)
            if pid is not None:
                _terminate(pid)


def start(directory: Path, bin_dir: Path | None = None, *, apiserver: Path | None = None,
          controllers: bool = True) -> ControlPlane:
    """Start a control plane whose files live in ``directory``; stop it with ``stop()``.
    ``apiserver``: another kube-apiserver binary than ``bin_dir``'s (etcd and kubectl stay
    ``bin_dir``'s); ``controllers=False``: etcd and the API server only, no controller
    manager and no scheduler (nothing acts on the objects but the test)."""
    began = time.monotonic()
    bin_dir = bin_dir or kube_bin()
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.create(directory / "pki")
    cp = ControlPlane(directory, bin_dir, free_port(), free_port(),
                      binaries={"kube-apiserver": apiserver} if apiserver else {})
    for user, cn, groups in ((ADMIN, "admin", ("system:masters",)),
                             ("controller-manager", "system:kube-controller-manager", ()),
                             ("scheduler", "system:kube-scheduler", ())):
        pki.issue(user, cn, groups=groups)
        _write_kubeconfig(cp, user)
    try:
        cp.pids["etcd"] = _spawn(cp, "etcd", [
            "--name", "test", "--data-dir", str(directory / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{cp.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{cp.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        cp.pids["kube-apiserver"] = _spawn(cp, "kube-apiserver", [
            "--etcd-servers", f"http://127.0.0.1:{cp.etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(cp.api_port),
            "--tls-cert-file", str(pki.path("apiserver.crt")),
            "--tls-private-key-file", str(pki.path("apiserver.key")),
            "--client-ca-file", str(pki.path("ca.crt")),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki.path("sa.pub")),
            "--service-account-signing-key-file", str(pki.path("sa.key")),
            "--api-audiences", "https://kubernetes.default.svc.cluster.local",
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction",
            "--service-cluster-ip-range", SERVICE_RANGE,
            "--allow-privileged=true", "--profiling=false",
            "--endpoint-reconciler-type", "none",
            "--event-ttl", "1h", "--v", "1",
        ])
        _wait_ready(cp)
        if not controllers:
            cp.started_in = time.monotonic() - began
            return cp
        cp.pids["kube-controller-manager"] = _spawn(cp, "kube-controller-manager", [
            *_client_flags(cp, "controller-manager"), "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(pki.path("sa.key")),
            "--root-ca-file", str(pki.path("ca.crt")),
            "--cluster-signing-cert-file", str(pki.path("ca.crt")),
            "--cluster-signing-key-file", str(pki.path("ca.key")),
            "--controllers", "*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,"
                             "-node-route-controller",
            "--concurrent-job-syncs", "10", "--v", "1",
        ])
        cp.pids["kube-scheduler"] = _spawn(cp, "kube-scheduler", [
            *_client_flags(cp, "scheduler"), "--v", "1"])
        _wait_controllers(cp)
    except BaseException:
        cp.stop()
        raise
    cp.started_in = time.monotonic() - began
    return cp


def _client_flags(cp: ControlPlane, user: str) -> list[str]:
    """What the controller manager and the scheduler share: their identity (for the API and
    for their own serving endpoint), a loopback port of their own, no leader election."""
    kubeconfig = str(cp.kubeconfig(user))
    return ["--kubeconfig", kubeconfig, "--authentication-kubeconfig", kubeconfig,
            "--authorization-kubeconfig", kubeconfig, "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()), "--leader-elect=false"]


def _spawn(cp: ControlPlane, name: str, args: list[str]) -> int:
    cp.args[name] = args
    log = (cp.directory / f"{name}.log").open("ab")
    proc = subprocess.Popen([str(cp.binary(name)), *args], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, start_new_session=True)
    log.close()
    return proc.pid


def _wait_ready(cp: ControlPlane) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        for name, alive in cp.alive().items():
            if not alive:
                raise RuntimeError(f"{name} exited while the control plane started:\n"
                                   f"{cp.log_of(name)}")
        try:
            with urllib.request.urlopen(f"{cp.server}/readyz", timeout=2,  # noqa: S310
                                        context=cp.ssl_context()) as response:
                if response.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT:g}s ({last}):\n"
                       f"{cp.log_of('kube-apiserver')}")


def _wait_controllers(cp: ControlPlane) -> None:
    """Ready for a namespace: the default ServiceAccount appears once the service account
    and token controllers run."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for name, alive in cp.alive().items():
            if not alive:
                raise RuntimeError(f"{name} exited while the control plane started:\n"
                                   f"{cp.log_of(name)}")
        with contextlib.suppress(OSError):
            cp.get("/api/v1/namespaces/default/serviceaccounts/default")
            return
        time.sleep(0.2)
    raise RuntimeError(f"the controllers did not create the default ServiceAccount in "
                       f"{START_TIMEOUT:g}s:\n{cp.log_of('kube-controller-manager')}")


def _write_kubeconfig(cp: ControlPlane, user: str) -> None:
    pki = cp.pki
    cp.kubeconfig(user).write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "infra-test",
        "clusters": [{"name": "infra-test", "cluster": {
            "server": cp.server, "certificate-authority": str(pki.path("ca.crt"))}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki.path(f"{user}.crt")),
            "client-key": str(pki.path(f"{user}.key"))}}],
        "contexts": [{"name": "infra-test", "context": {"cluster": "infra-test", "user": user}}],
    }, indent=1))
    cp.kubeconfig(user).chmod(0o600)


def add_user(cp: ControlPlane, user: str, common_name: str,
             groups: tuple[str, ...] = ()) -> Path:
    """A client certificate and kubeconfig for another identity (a node, a test user)."""
    cp.pki.issue(user, common_name, groups=groups)
    _write_kubeconfig(cp, user)
    return cp.kubeconfig(user)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _terminate(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@contextlib.contextmanager
def running(bin_dir: Path | None = None, *, apiserver: Path | None = None,
            controllers: bool = True) -> Iterator[ControlPlane]:
    directory = Path(tempfile.mkdtemp(prefix="kube-"))
    cp = start(directory, bin_dir, apiserver=apiserver, controllers=controllers)
    try:
        yield cp
    finally:
        cp.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- a person's cluster ---------------------------------------------------------------------

def _default_dir() -> Path:
    return Path(os.environ.get("INFRA_CLUSTER_DIR")
                or Path(tempfile.gettempdir()) / "infra-service-cluster")


PERSON_NODE = "node-1"


def _start_node_process(cp: ControlPlane) -> int:
    """The node stand-in (tests/support/node.py) as a process of its own, so that it outlives
    ``up``; returns its pid once the Node is Ready."""
    log = (cp.directory / "node.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.controlplane", "node",
                             "--dir", str(cp.directory)], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with {proc.returncode}:\n{cp.log_of('node')}")
        ready = cp.kubectl("get", "node", PERSON_NODE, "-o",
                           "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                           check=False).stdout
        if ready == "True":
            return proc.pid
        time.sleep(0.5)
    raise RuntimeError(f"node {PERSON_NODE} not Ready in {START_TIMEOUT:g}s:\n"
                       f"{cp.log_of('node')}")


def _run_node(cp: ControlPlane) -> int:
    from tests.support.node import running_node  # it imports this module

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with running_node(cp, PERSON_NODE):
        stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.sh", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "node"],
                        help="node: run the node stand-in of a started cluster (up does)")
    parser.add_argument("--dir", type=Path, default=_default_dir(),
                        help="where its files live (default: %(default)s)")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.command == "up":
        if (directory / "state.json").exists() and any(
                ControlPlane.load(directory).alive().values()):
            print(f"a cluster already runs from {directory}; "
                  "run 'scripts/cluster.sh down' first", file=sys.stderr)
            return 1
        shutil.rmtree(directory, ignore_errors=True)
        cp = start(directory)
        cp.save()
        print(f"control plane started in {cp.started_in:.1f} s", file=sys.stderr)
        cp.pids["node"] = _start_node_process(cp)
        cp.save()
        print(f"node {PERSON_NODE} is Ready (pods run as podman containers of local images; "
              f"its log: {directory / 'node.log'})", file=sys.stderr)
        print(f"export KUBECONFIG={cp.kubeconfig()}")
        return 0
    if args.command == "node":
        return _run_node(ControlPlane.load(directory))
    if not (directory / "state.json").exists():
        print(f"no cluster state in {directory}", file=sys.stderr)
        return 1 if args.command == "status" else 0
    cp = ControlPlane.load(directory)
    if args.command == "status":
        print(json.dumps({"server": cp.server, "kubeconfig": str(cp.kubeconfig()),
                          "running": cp.alive()}, indent=1))
        return 0 if all(cp.alive().values()) else 1
    cp.stop()
    shutil.rmtree(directory, ignore_errors=True)
    print(f"stopped; removed {directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
