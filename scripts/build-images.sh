#!/usr/bin/env bash
# Builds the local base images that tests, the demo and the Dockerfiles start from.
# No registry is reachable from CI, so every base image is made with debootstrap and
# imported into podman. Images are cached: an existing tag is not rebuilt unless
# REBUILD=1. Usage: scripts/build-images.sh [vps|python|all]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/podman/containers.conf}
# The Debian mirror this machine's apt uses (deb822 sources first, then sources.list).
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
mirror=${mirror:-$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
if [ -z "$mirror" ]; then
  echo "scripts/build-images.sh: no Debian mirror found in /etc/apt/sources.list.d/*.sources" \
       "or /etc/apt/sources.list; set DEBIAN_MIRROR to the mirror debootstrap should use" >&2
  exit 1
fi
suite=bookworm

VPS_IMAGE=${VPS_IMAGE:-localhost/infra-vps:bookworm}
PYTHON_IMAGE=${PYTHON_IMAGE:-localhost/infra-python-base:bookworm}

have() { [ "${REBUILD:-0}" != 1 ] && podman image exists "$1"; }

bootstrap() { # tag packages
  local tag=$1 pkgs=$2 dir
  dir=$(mktemp -d)
  echo "building $tag from debootstrap ($suite, $mirror)" >&2
  debootstrap --variant=minbase --include="$pkgs" "$suite" "$dir" "$mirror" >/dev/null
  # apt inside containers needs the same mirror; drop caches to keep the image small
  echo "deb $mirror $suite main" >"$dir/etc/apt/sources.list"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  [ -z "${CUSTOMIZE:-}" ] || "$CUSTOMIZE" "$dir"
  tar -C "$dir" -c . | podman import "${@:3}" - "$tag" >/dev/null
  rm -rf "$dir"
}

vps_customize() { # dir
  # Like a provider's image: host keys are made on first boot, so every host differs.
  rm -f "$1"/etc/ssh/ssh_host_*
  cat >"$1/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
RequiredBy=ssh.service
UNIT
  mkdir -p "$1/etc/systemd/system/ssh.service.requires"
  ln -sf /etc/systemd/system/ssh-hostkeys.service "$1/etc/systemd/system/ssh.service.requires/"
  # Units that cannot work in a container and only slow the boot down.
  for unit in systemd-remount-fs.service getty@tty1.service console-getty.service; do
    ln -sf /dev/null "$1/etc/systemd/system/$unit"
  done
}

build_vps() {
  have "$VPS_IMAGE" && return 0
  # A fresh VPS: systemd as PID 1, sshd, python3 for Ansible, sudo.
  CUSTOMIZE=vps_customize bootstrap "$VPS_IMAGE" openssh-server,python3,sudo,systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates \
    --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3'
}

build_python() {
  have "$PYTHON_IMAGE" && return 0
  bootstrap "$PYTHON_IMAGE" python3,python3-venv,ca-certificates \
    --change 'CMD ["/usr/bin/python3"]'
}

case "${1:-all}" in
  vps) build_vps ;;
  python) build_python ;;
  all) build_vps; build_python ;;
  *) echo "usage: $0 [vps|python|all]" >&2; exit 2 ;;
esac
