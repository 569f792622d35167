#!/bin/sh
# The final images never install anything: purge apt and what only apt and maintainer
# scripts use. dpkg and its database stay, so image scanners still see every package.
# Debug a running pod with an ephemeral container (kubectl debug) instead.
set -eu
dpkg --purge --force-remove-essential --force-depends \
  apt libapt-pkg6.0 gpgv debian-archive-keyring libstdc++6 perl-base >/dev/null 2>&1
# Fail the build if anything left behind needed one of the purged libraries.
broken=$(find /usr /opt -xdev -type f \( -name '*.so*' -o -perm -u+x \) -exec ldd {} + 2>/dev/null \
  | awk '/^\// {file=$1} /not found/ {print file, $1}')
if [ -n "$broken" ]; then
  echo "libraries missing after purging the package manager:" >&2
  echo "$broken" >&2
  exit 1
fi
