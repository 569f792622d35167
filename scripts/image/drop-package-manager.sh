#!/bin/sh
# The final images never install anything: purge apt and the libraries only apt (and its
# TLS download method) or maintainer scripts use. dpkg and its database stay, so image
# scanners still see every package. Debug a running pod with an ephemeral container
# (kubectl debug) instead.
# KEEP_PACKAGES names those of them the image's own code needs (e.g. libstdc++6 for a C++
# extension module).
set -eu
purge=""
for pkg in apt libapt-pkg6.0 gpgv debian-archive-keyring libstdc++6 perl-base libseccomp2 \
    libxxhash0 libgnutls30 libp11-kit0 libidn2-0 libunistring2 libnettle8 libhogweed6 \
    libtasn1-6; do
  case " ${KEEP_PACKAGES:-} " in
    *" $pkg "*) ;;
    *) purge="$purge $pkg" ;;
  esac
done
# shellcheck disable=SC2086  # word splitting of the package list is intended
dpkg --purge --force-remove-essential --force-depends $purge >/dev/null 2>&1
# Fail the build if anything left behind needed one of the purged libraries.
"$(dirname "$0")/check-libraries.sh" /usr
