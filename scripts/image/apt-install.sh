#!/bin/sh
# Installs the Debian packages the base image lacks; downloads nothing when all are present,
# so a prepared base (python3 already in it) builds without touching the mirror.
set -eu
missing=""
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0
apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq --no-install-recommends $missing >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/*
