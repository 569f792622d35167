#!/usr/bin/env bash
# Starts or stops the test suite's real Kubernetes control plane and its node stand-in
# (node-1: pods run as podman containers of local images) for a person:
#   eval "$(scripts/cluster.sh up)"    # builds the pinned binaries once, then prints KUBECONFIG
#   kubectl get ns; helm list -A       # the binaries are in "$(scripts/kube/build.sh)"
#   scripts/cluster.sh status | down
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}
[ -x .venv/bin/python ] || scripts/install-deps.sh >&2
bin=$(scripts/kube/build.sh)
if [ "${1:-}" = up ]; then echo "export PATH=$bin:\$PATH"; fi
exec .venv/bin/python -m tests.support.controlplane "$@"
