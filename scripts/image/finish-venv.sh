#!/bin/sh
# Makes the venv fit for a read-only image, in two steps so that a code change redoes only
# the second:
#   finish-venv.sh deps      drop what only builds or tests need, compile the dependencies
#   finish-venv.sh project   compile the project's packages, remove the installers
# unchecked-hash pycs stay valid whatever the file times become after COPY, so a read-only
# root never recompiles at start. SOURCELESS lists bulky directories of boilerplate code
# (relative to site-packages, e.g. the Kubernetes client's model classes) kept as bytecode
# only: tracebacks still name file and line, and the image is smaller by their sources.
set -eu
site=$(echo "$VENV"/lib/python3*/site-packages)
compile() { "$VENV/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$@" >/dev/null; }
case "$1" in
  deps)
    rm -rf "$site"/ansible_test "$VENV"/bin/ansible-test
    find "$site" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' -o -name '*.h' \
      -o -name '*.cpp' \) -type f -delete
    # Wheels may ship their extensions with debug information (several MB each, e.g.
    # pysimdjson's); nothing in a running container reads it. Where the builder has strip.
    if command -v strip >/dev/null; then
      find "$site" -name '*.so*' -type f -exec strip --strip-debug {} +
    fi
    find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
    for dir in ${SOURCELESS:-}; do
      "$VENV/bin/python" -m compileall -q -b -j 0 "$site/$dir" >/dev/null
      find "$site/$dir" -name '*.py' -type f -delete
    done
    compile "$site"
    ;;
  project)
    "$VENV/bin/python" -m pip uninstall -y -q pip setuptools wheel >/dev/null 2>&1 || true
    rm -rf "$site"/_distutils_hack "$site"/distutils-precedence.pth "$site"/pkg_resources \
           "$site"/pip "$site"/setuptools "$site"/wheel \
           "$VENV"/bin/pip* "$VENV"/bin/activate*
    # Each image holds contracts plus one deployable; its console script only.
    for pkg in contracts dispatcher runner_image; do
      if [ -d "$site/$pkg" ]; then compile "$site/$pkg"; fi
    done
    if [ ! -d "$site/dispatcher" ]; then rm -f "$VENV"/bin/infra-dispatcher; fi
    if [ ! -d "$site/runner_image" ]; then rm -f "$VENV"/bin/infra-runner; fi
    ;;
  *) echo "usage: $0 deps|project" >&2; exit 2 ;;
esac
