#!/bin/sh
# Fails when a binary or shared object below the given directories needs a library the
# image does not have (e.g. one purged with the package manager).
set -eu
broken=$(find "$@" -xdev -type f \( -name '*.so*' -o -perm -u+x \) -exec ldd {} + 2>/dev/null \
  | awk '/^\// {file=$1} /not found/ {print file, $1}')
if [ -n "$broken" ]; then
  echo "missing shared libraries:" >&2
  echo "$broken" >&2
  exit 1
fi
