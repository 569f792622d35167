#!/usr/bin/env bash
# Installs what the tests and the demo need on Debian 12: system packages (as root, via
# apt) and the project with its dev extras in ./.venv. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(redis-server postgresql podman runc debootstrap openssh-client openssh-server
          sshpass python3-venv git ca-certificates prometheus gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing system packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# An unprivileged account for the checks root cannot make (root writes into a read-only
# directory): tests/runner/test_termination.py runs them as this user when run as root.
if ! id -u infra-unprivileged >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo useradd --system --no-create-home --shell /usr/sbin/nologin infra-unprivileged
fi
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
# The Kubernetes control plane and helm the tests run against, built once from their pinned
# Go modules into a cache outside the repository (scripts/kube/build.sh says where and how long).
started=$(date +%s)
scripts/kube/build.sh >/dev/null
echo "kubernetes binaries ready in $(( $(date +%s) - started )) s" >&2
started=$(date +%s)
scripts/kube/build.sh floor >/dev/null
echo "kube-apiserver of the chart's oldest release ready in $(( $(date +%s) - started )) s" >&2
