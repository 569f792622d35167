#!/bin/sh
# Removes what a container that only runs Python never reads: documentation (license files
# stay), translations, package indexes and caches, the venv bootstrap wheels and stdlib
# parts meant for development. The final stage copies the result into an empty image.
set -eu
find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find /usr/share/doc -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian \
       /usr/share/python-wheels /usr/lib/x86_64-linux-gnu/gconv /usr/lib/aarch64-linux-gnu/gconv \
       /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /root/.cache
find /var/log -type f -delete
for py in /usr/lib/python3.*; do
  rm -rf "$py"/test "$py"/idlelib "$py"/lib2to3 "$py"/pydoc_data "$py"/ensurepip "$py"/turtledemo
done
