#!/bin/sh
# Makes the venv fit for a read-only image: drops the installers and what only builds or
# tests need, then compiles bytecode once. unchecked-hash pycs stay valid whatever the file
# times become after COPY, so a read-only root never recompiles at start.
# SOURCELESS lists generated-code directories (relative to site-packages) kept as bytecode
# only: their tracebacks still name file and line, and the image is smaller by the sources.
set -eu
site=$(echo "$VENV"/lib/python3*/site-packages)
"$VENV/bin/python" -m pip uninstall -y -q pip setuptools wheel >/dev/null 2>&1 || true
rm -rf "$site"/_distutils_hack "$site"/distutils-precedence.pth "$site"/pkg_resources \
       "$site"/ansible_test "$VENV"/bin/ansible-test "$VENV"/bin/pip* "$VENV"/bin/activate*
find "$site" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' -o -name '*.h' \) \
  -type f -delete
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
for dir in ${SOURCELESS:-}; do
  "$VENV/bin/python" -m compileall -q -b -j 0 "$site/$dir" >/dev/null
  find "$site/$dir" -name '*.py' -type f -delete
done
"$VENV/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$site" >/dev/null
