#!/usr/bin/env bash
# Builds the dispatcher and runner images from Dockerfile.dispatcher / Dockerfile.runner.
#
#   scripts/build-app-images.sh [dispatcher|runner|all]
#
# ENGINE       podman (default when installed) or docker
# TAG          image tag (default: dev); images are $IMAGE_PREFIX{dispatcher,runner}:$TAG
# IMAGE_PREFIX default: localhost/infra-service-
# BASE_IMAGE   podman default: localhost/infra-python-base:bookworm (made by
#              scripts/build-images.sh python, as no registry is reachable there);
#              docker default: the Dockerfiles' own (debian:bookworm-slim)
# IMAGE_SOURCE org.opencontainers.image.source (default: the git remote "origin", no credentials)
# PIP_CA_BUNDLE  CA bundle handed to pip inside podman builds (default: the system bundle)
# Prints one line per image: name, seconds taken.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}
if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
TAG=${TAG:-dev}
IMAGE_PREFIX=${IMAGE_PREFIX:-localhost/infra-service-}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# Build time (RFC 3339; SOURCE_DATE_EPOCH pins it for reproducible builds) and where the
# source lives (IMAGE_SOURCE, else the git remote without any credentials in it).
created=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%dT%H:%M:%SZ)
source_url=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null | sed -E 's#//[^/@]*@#//#' || true)}
args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision"
      --build-arg "CREATED=$created" --build-arg "SOURCE=${source_url:-unknown}")
if [ "$ENGINE" = podman ]; then
  BASE_IMAGE=${BASE_IMAGE:-localhost/infra-python-base:bookworm}
  if [ "$BASE_IMAGE" = localhost/infra-python-base:bookworm ]; then
    scripts/build-images.sh python
  fi
  bundle=${PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$bundle" ]; then
    # Its own path: mounting over the image's bundle would break dpkg.
    args+=(--volume "$bundle:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
fi
[ -z "${BASE_IMAGE:-}" ] || args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

build() { # component
  local started=$SECONDS
  "$ENGINE" build --quiet -f "Dockerfile.$1" "${args[@]}" -t "$IMAGE_PREFIX$1:$TAG" . >/dev/null
  echo "$IMAGE_PREFIX$1:$TAG built in $((SECONDS - started)) s"
}

case "${1:-all}" in
  dispatcher|runner) build "$1" ;;
  all) build dispatcher; build runner ;;
  *) echo "usage: $0 [dispatcher|runner|all]" >&2; exit 2 ;;
esac
