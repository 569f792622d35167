#!/bin/sh
# The final images never install anything: purge apt and what only apt and maintainer
# scripts use. dpkg and its database stay, so image scanners still see every package.
# Debug a running pod with an ephemeral container (kubectl debug) instead.
set -eu
dpkg --purge --force-remove-essential --force-depends \
  apt libapt-pkg6.0 gpgv debian-archive-keyring libstdc++6 perl-base >/dev/null 2>&1
"$(dirname "$0")/check-libraries.sh" /usr
