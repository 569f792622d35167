#!/bin/sh
# pip install into the image's venv. PIP_CERT (a build argument) names a CA bundle for
# builders behind a TLS-inspecting proxy; empty means the system's default trust.
set -eu
[ -n "${PIP_CERT:-}" ] || unset PIP_CERT
exec "$VENV/bin/pip" install --no-cache-dir --no-compile --disable-pip-version-check \
  --no-input "$@"
