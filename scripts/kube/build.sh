#!/usr/bin/env bash
# Builds the Kubernetes control plane the tests run against (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) and helm from their published Go modules,
# pinned by scripts/kube/go.mod and scripts/kube/helm/go.mod with their go.sum files; with
# `floor`, the kube-apiserver of the oldest release the chart claims, pinned by
# scripts/kube/floor/go.mod (it runs with the main build's etcd and kubectl).
# The binaries go to a cache outside the repository, keyed by the versions and the pins;
# a second run finds them there and builds nothing. Prints the directory on stdout.
#
#   scripts/kube/build.sh            build if needed, print the bin directory
#   scripts/kube/build.sh floor      the same for the floor's kube-apiserver
#   KUBE_CACHE_DIR=/x scripts/...    another cache root (default: ~/.cache/infra-service/kube)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
target=${1:-main}
case "$target" in
  main)
    version=$KUBE_VERSION tools=(etcd kube-apiserver kube-controller-manager kube-scheduler
                                 kubectl helm)
    pins=("$here/go.mod" "$here/go.sum" "$here/helm/go.mod" "$here/helm/go.sum"
          "$here/cmd/etcd/main.go")
    name=$KUBE_VERSION ;;
  floor)
    version=$FLOOR_KUBE_VERSION tools=(kube-apiserver)
    pins=("$here/floor/go.mod" "$here/floor/go.sum")
    name=floor-$FLOOR_KUBE_VERSION ;;
  *) echo "usage: scripts/kube/build.sh [main|floor]" >&2; exit 2 ;;
esac

need_go=$GO_MIN_VERSION
if ! command -v go >/dev/null 2>&1; then
  echo "scripts/kube/build.sh: Go $need_go or newer is needed to build the Kubernetes" \
       "control plane, and 'go' is not on PATH; install Go $need_go+ and run again" >&2
  exit 1
fi
have_go=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -n1)" != "$need_go" ]; then
  echo "scripts/kube/build.sh: Kubernetes $version needs Go $need_go or newer;" \
       "this machine has Go $have_go (go env GOVERSION). Install a newer Go and run again" >&2
  exit 1
fi

key=$(cat "$here/versions.env" "${pins[@]}" "$0" | sha256sum | cut -c1-12)
root=${KUBE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infra-service/kube}
bin="$root/$name-$key/bin"
cached() {
  local t
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}
if cached; then
  echo "kubernetes $version binaries: cached in $bin" >&2
  echo "$bin"
  exit 0
fi
# Test sessions started at the same time all call this script: one builds, the others wait
# for it and then find the binaries, instead of writing into the same directory at once.
mkdir -p "$root"
exec 9>"$root/.build-$name.lock"
flock 9
if cached; then
  echo "kubernetes $version binaries: built meanwhile in $bin" >&2
  echo "$bin"
  exit 0
fi

rm -rf "$bin.partial"
mkdir -p "$bin.partial"
started=$(date +%s)
minor=$(echo "$version" | cut -d. -f2)
stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$stamp"
done
if [ "$target" = floor ]; then
  echo "building kube-apiserver $version with $(go env GOVERSION) into $bin" \
       "(a first build takes several minutes on 2 cores)" >&2
  (cd "$here/floor" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
      -ldflags "-s -w $ldflags" -o "$bin.partial/" k8s.io/kubernetes/cmd/kube-apiserver)
else
  echo "building kubernetes $version and etcd with $(go env GOVERSION) into $bin" \
       "(a first build takes several minutes on 2 cores)" >&2
  (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w $ldflags" \
      -o "$bin.partial/" ./cmd/etcd k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl)
  echo "building helm $HELM_VERSION" >&2
  (cd "$here/helm" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      -o "$bin.partial/helm" helm.sh/helm/v3/cmd/helm)
fi
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "kubernetes $version binaries built in $(( $(date +%s) - started )) s: $bin" >&2
echo "$bin"
