#!/usr/bin/env bash
# Builds the dispatcher and runner images (cached layers make a rebuild quick) and prints
# their build time, size and compressed size against the budgets. Exit status 1 when an
# image is over its budget.
#
#   scripts/image-sizes.sh            # build with podman (or ENGINE=docker), then measure
#   NO_BUILD=1 TAG=e2e scripts/image-sizes.sh   # measure existing images only
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}
if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
export ENGINE TAG=${TAG:-dev} IMAGE_PREFIX=${IMAGE_PREFIX:-localhost/infra-service-}
declare -A budget_mb=([dispatcher]=150 [runner]=350)
status=0
printf '%-12s %10s %12s %16s %10s\n' image build_s size_MB compressed_MB budget_MB
for component in dispatcher runner; do
  ref="$IMAGE_PREFIX$component:$TAG"
  seconds=-
  if [ "${NO_BUILD:-0}" != 1 ]; then
    started=$SECONDS
    scripts/build-app-images.sh "$component" >/dev/null
    seconds=$((SECONDS - started))
  fi
  bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$ref")
  # What a registry stores and a node pulls: the image as a gzip-compressed archive.
  compressed=$("$ENGINE" save "$ref" 2>/dev/null | gzip -6 | wc -c)
  size_mb=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1e6}')
  printf '%-12s %10s %12s %16s %10s\n' "$component" "$seconds" "$size_mb" \
    "$(awk -v b="$compressed" 'BEGIN {printf "%.1f", b / 1e6}')" "${budget_mb[$component]}"
  if awk -v b="$bytes" -v m="${budget_mb[$component]}" 'BEGIN {exit !(b > m * 1e6)}'; then
    echo "$ref is over its budget of ${budget_mb[$component]} MB" >&2
    status=1
  fi
done
exit $status
