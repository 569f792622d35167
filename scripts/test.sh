#!/usr/bin/env bash
# Runs the whole test suite on a Debian machine: installs system packages and a venv,
# builds the cached test images, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}
scripts/build-images.sh all
.venv/bin/ruff check .
.venv/bin/mypy  # strict, on the packages listed in pyproject's [tool.mypy]
set +e
.venv/bin/python -m pytest --durations=25 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
