#!/bin/sh
# The final images never install anything: purge apt and the libraries only apt (and its
# TLS download method) or maintainer scripts use. dpkg and its database stay, so image
# scanners still see every package. Debug a running pod with an ephemeral container
# (kubectl debug) instead.
set -eu
dpkg --purge --force-remove-essential --force-depends \
  apt libapt-pkg6.0 gpgv debian-archive-keyring libstdc++6 perl-base libseccomp2 libxxhash0 \
  libgnutls30 libp11-kit0 libidn2-0 libunistring2 libnettle8 libhogweed6 libtasn1-6 \
  >/dev/null 2>&1
# Fail the build if anything left behind needed one of the purged libraries.
"$(dirname "$0")/check-libraries.sh" /usr
