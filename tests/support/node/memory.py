"""The container's memory limit and the kernel's OOM notification."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


class PodMemory:
    """The container's memory limit, where the kernel says when it kills for it.

    On cgroup v1 (as on the project's machines) podman cannot tell an OOM kill from any other
    SIGKILL, so the node makes a pod cgroup holding the limit, starts the container under it
    (``--cgroup-parent``) and listens for the kernel's OOM notification on it (an eventfd
    registered through ``cgroup.event_control``), as the container runtime does for the
    kubelet. Elsewhere podman's ``--memory`` and its ``OOMKilled`` are used."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.args: list[str] = []
        self.path: Path | None = None
        self._eventfd: int | None = None
        if limit is None:
            return
        try:
            self._cgroup_v1(CGROUP_V1_MEMORY / name, limit)
            self.args = ["--cgroup-parent", f"/{name}"]
        except OSError as exc:
            log.info("no v1 memory cgroup for %s (%s): podman --memory", name, exc)
            self.remove()
            self.args = ["--memory", str(limit), "--memory-swap", str(limit)]

    def _cgroup_v1(self, path: Path, limit: int) -> None:
        if not (CGROUP_V1_MEMORY / "cgroup.event_control").exists():
            raise OSError("no cgroup v1 memory controller")
        self.path = path
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control = os.open(path / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (path / "cgroup.event_control").write_text(f"{self._eventfd} {control}")
        finally:
            os.close(control)

    def oom_killed(self) -> bool:
        if self._eventfd is None:
            return False
        try:
            return os.eventfd_read(self._eventfd) > 0
        except BlockingIOError:
            return False

    def remove(self) -> None:
        if self._eventfd is not None:
            os.close(self._eventfd)
            self._eventfd = None
        if self.path is not None and self.path.exists():
            with contextlib.suppress(OSError):  # conmon's cgroup, then the pod's
                for sub in self.path.iterdir():
                    if sub.is_dir():
                        sub.rmdir()
                self.path.rmdir()


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes quantity (``256Mi``, ``1G``, ``1000``) in bytes."""
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * factor)
    return int(float(text))
