"""Things the tests do inside a host: small Docker images and containers, filling disks.

No image can be pulled here, so the one image the tests need is made inside the host from
Debian's static busybox (`docker import`). BuildKit builds work (they only COPY files);
anything that has to run a container inside the host's Docker relies on the daemon's
default-cgroupns-mode=private, which the tests set through docker_daemon_extra_options.
"""

from __future__ import annotations

import shlex

from tests.support.hosts import Host

BUSYBOX_IMAGE = "local/busybox:1"
APPLETS = ("sh", "httpd", "head", "tr", "fold", "sleep", "cat", "echo", "ls")


def ensure_busybox_image(host: Host) -> str:
    """A tiny image with busybox and a one-line web page in /www."""
    if host.exec(f"docker image inspect {BUSYBOX_IMAGE}", check=False).returncode == 0:
        return BUSYBOX_IMAGE
    links = " ".join(f"ln -s busybox $d/bin/{a};" for a in APPLETS)
    host.exec(
        "command -v busybox >/dev/null || "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null; "
        "d=$(mktemp -d) && mkdir -p $d/bin $d/www $d/tmp && cp /bin/busybox $d/bin/ && "
        f"{links} echo hello-from-container > $d/www/index.html && "
        f"tar -C $d -c . | docker import - {BUSYBOX_IMAGE} >/dev/null && rm -rf $d",
        timeout=300)
    return BUSYBOX_IMAGE


def run_web(host: Host, name: str, published: int, *, restart: str = "no") -> None:
    """A container serving /www on port 80, published on `published` on all addresses."""
    image = ensure_busybox_image(host)
    host.exec(f"docker rm -f {name} >/dev/null 2>&1; docker run -d --name {name} "
              f"--restart {restart} -p {published}:80 {image} httpd -f -p 80 -h /www >/dev/null")


def docker_json(host: Host, path: str) -> str:
    """GET a Docker API path over the daemon's socket (curl comes with the base role)."""
    return host.exec(f"curl -sf --unix-socket /run/docker.sock http://localhost{shlex.quote(path)}"
                     ).stdout


def file_size(host: Host, path: str) -> int:
    return int(host.exec(f"stat -c %s {shlex.quote(path)}").stdout.strip())
