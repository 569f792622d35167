"""The dispatcher and runner images, built once per content.

An image is tagged with a hash of everything that goes into it (Dockerfile, build context
files, base image id), so a re-run with unchanged inputs reuses it and any change rebuilds.
Builds go through scripts/build-app-images.sh, the same path as the size and kind scripts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.hosts import podman, podman_env

REPO = Path(__file__).resolve().parents[2]
PREFIX = "localhost/infra-service-"
BASE_IMAGE = "localhost/infra-python-base:bookworm"
# Build context inputs (mirrors .dockerignore).
INPUTS = ("pyproject.toml", "README.md", ".dockerignore", "contracts", "dispatcher", "runner_image",
          "ansible", "scripts/image")
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
PODMAN_OWN = {"HOME", "TMPDIR", "PATH", "USER", "SHELL", "LANG", "LC_ALL"}


@dataclass(frozen=True)
class Image:
    component: str
    ref: str
    build_seconds: float | None  # None: reused from an earlier build

    @property
    def size_bytes(self) -> int:
        return int(podman("image", "inspect", "--format", "{{.Size}}", self.ref).stdout)

    def inspect(self, template: str) -> str:
        return podman("image", "inspect", "--format", template, self.ref).stdout.strip()


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not SKIP_PARTS & set(path.parts) and path.suffix != ".pyc":
            yield path


def content_hash(component: str, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for name in (f"Dockerfile.{component}", *INPUTS):
        for path in _files(REPO / name):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0")
            digest.update(f"{path.stat().st_mode & 0o111:o}".encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    # Parallel sessions on one machine build one at a time (2 cores) and reuse each other's.
    with open(Path(tempfile.gettempdir()) / "infra-service-image-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_base() -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        subprocess.run([str(REPO / "scripts" / "build-images.sh"), "python"], check=True,
                       env=podman_env(), timeout=900)
    return podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()


def _drop_stale_tags(component: str, keep: str) -> None:
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", f"{PREFIX}{component}",
                    check=False).stdout.split()
    for ref in listed:
        if ref != keep and ref.split(":")[-1].startswith("test-"):
            podman("rmi", ref, check=False)


def ensure_image(component: str) -> Image:
    with _build_lock():
        tag = f"test-{content_hash(component, _ensure_base())}"
        ref = f"{PREFIX}{component}:{tag}"
        if podman("image", "exists", ref, check=False).returncode == 0:
            return Image(component, ref, None)
        started = time.monotonic()
        env = {**podman_env(), "TAG": tag, "IMAGE_PREFIX": PREFIX, "ENGINE": "podman",
               "BASE_IMAGE": BASE_IMAGE}
        done = subprocess.run([str(REPO / "scripts" / "build-app-images.sh"), component],
                              env=env, capture_output=True, text=True, timeout=1500)
        if done.returncode != 0:
            raise RuntimeError(f"building {ref} failed:\n{done.stdout}\n{done.stderr[-4000:]}")
        _drop_stale_tags(component, ref)
        return Image(component, ref, time.monotonic() - started)


def run_command(image: Image, *args: str, env: dict[str, str] | None = None,
                read_only: bool = True, network_host: bool = False,
                entrypoint: str | None = None, extra: tuple[str, ...] = ()
                ) -> tuple[list[str], dict[str, str]]:
    """The ``podman run`` command line that runs the image like Kubernetes runs it (read-only
    root, scratch on tmpfs), and the environment podman itself must be started with.

    Values of ``env`` travel in podman's own environment (``-e NAME`` without a value), so
    they never appear on a command line; the few variables podman itself reads (HOME,
    TMPDIR, ...) hold no secrets and are given as ``-e NAME=VALUE``.
    """
    cmd = ["podman", "run", "--rm", "--pull=never", "--security-opt", "no-new-privileges",
           "--cap-drop", "ALL"]
    if read_only:
        # emptyDir semantics: a fresh directory the unprivileged user can write (U: chown to
        # the container's user, as fsGroup does); nothing else writable, not even /tmp.
        cmd += ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/scratch:rw,size=256m,U"]
    if network_host:
        cmd += ["--network", "host"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    process_env = podman_env()
    for name, value in (env or {}).items():
        if name in PODMAN_OWN or name.startswith(("XDG_", "CONTAINER")):
            cmd += ["-e", f"{name}={value}"]
        else:
            cmd += ["-e", name]
            process_env[name] = value
    cmd += [*extra, image.ref, *args]
    return cmd, process_env


def run(image: Image, *args: str, env: dict[str, str] | None = None, read_only: bool = True,
        network_host: bool = False, entrypoint: str | None = None, timeout: float = 120,
        extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``podman run`` the image like Kubernetes runs it (see ``run_command``) and wait."""
    cmd, process_env = run_command(image, *args, env=env, read_only=read_only,
                                   network_host=network_host, entrypoint=entrypoint,
                                   extra=extra)
    return subprocess.run(cmd, env=process_env, capture_output=True, text=True, timeout=timeout)
