#!/usr/bin/env bash
# The main job, locally: Redis, PostgreSQL and a disposable Debian host (podman) are
# started, the host is registered, the dispatcher (local executor) takes one
# ProvisionerMessage and the runner provisions the host with the real Ansible play.
# Installs what it needs on Debian 12 (as root). Options: scripts/demo.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}
scripts/build-images.sh vps
exec .venv/bin/python scripts/demo.py "$@"
