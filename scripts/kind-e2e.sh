#!/usr/bin/env bash
# End-to-end run on a real Kubernetes cluster (kind), for machines with a Docker engine:
#
#   1. creates a kind cluster (or reuses KIND_CLUSTER if it exists),
#   2. builds both images and a disposable SSH target with docker, loads them into the node,
#   3. runs Redis, PostgreSQL and the target in the cluster (scripts/kind/services.yaml),
#   4. helm-installs charts/infra-service with scripts/kind/values.yaml (its pre-install hook
#      applies the migrations) and runs `helm test`,
#   5. registers the target (scripts/kind/prepare-job.yaml, which also migrates: idempotent),
#   6. pushes one ProvisionerMessage, waits for its result and the server's DB status,
#   7. checks what must hold (result succeeded, status READY, deploy key on the target, no
#      secret value in the Job object, no service account token in the runner pod),
#   8. prints the kubectl view an SRE would use.
#
# Needs docker (with a running engine), kind, kubectl, helm, ssh-keygen, openssl; the
# docker builds need the Debian and PyPI registries, and Docker Hub for the base images.
#
# Environment:
#   KIND_CLUSTER   cluster name (default infra-service-e2e)
#   KEEP_CLUSTER   1: keep a cluster this script created (default: delete it at the end)
#   E2E_NAMESPACE  namespace (default infra-e2e)
#   E2E_TIMEOUT    seconds to wait for the result (default 600)
#   E2E_PLAYBOOK   runner SETUP_PLAYBOOK (default playbooks/provision_access.yml; the plain
#                  sshd target has no systemd, which setup_server.yml needs)
#   REDIS_IMAGE, POSTGRES_IMAGE, BASE_IMAGE   images to use (defaults below)
#
# Exit status: 0 passed, 1 a check failed, 3 a required tool or the Docker engine is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-infra-service-e2e}
NS=${E2E_NAMESPACE:-infra-e2e}
TIMEOUT=${E2E_TIMEOUT:-600}
PLAYBOOK=${E2E_PLAYBOOK:-playbooks/provision_access.yml}
REDIS_IMAGE=${REDIS_IMAGE:-docker.io/library/redis:7.2-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-docker.io/library/postgres:15-bookworm}
export BASE_IMAGE=${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
RELEASE=infra-service
HANDLE=e2e-target-1
TAG=e2e
PREFIX=localhost/infra-service-
TARGET_IMAGE=localhost/infra-service-e2e-target:$TAG
KUBECTL=(kubectl --context "kind-$CLUSTER" -n "$NS")

say() { printf '\n=== %s\n' "$*"; }
fail() { echo "E2E FAILED: $*" >&2; exit 1; }

for tool in docker kind kubectl helm ssh-keygen openssl; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 3; }
done
docker info >/dev/null 2>&1 || { echo "docker info failed: no Docker engine is running" >&2; exit 3; }

work=$(mktemp -d)
chmod 700 "$work"
created=0
finish() {
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
    say "diagnostics"
    "${KUBECTL[@]}" get all,events --sort-by=.metadata.creationTimestamp 2>/dev/null | tail -n 60 || true
    "${KUBECTL[@]}" logs -l app.kubernetes.io/component=dispatcher --tail=50 --prefix 2>/dev/null || true
    "${KUBECTL[@]}" logs -l app.kubernetes.io/name=infra-service-runner --tail=50 --prefix 2>/dev/null || true
  fi
  rm -rf "$work"
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap finish EXIT

say "cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 180s
  created=1
fi

say "images"
ENGINE=docker TAG=$TAG IMAGE_PREFIX=$PREFIX scripts/build-app-images.sh all
docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -f scripts/kind/target.Dockerfile \
  -t "$TARGET_IMAGE" scripts/kind >/dev/null
docker pull -q "$REDIS_IMAGE" >/dev/null
docker pull -q "$POSTGRES_IMAGE" >/dev/null
for image in "${PREFIX}dispatcher:$TAG" "${PREFIX}runner:$TAG" "$TARGET_IMAGE" \
             "$REDIS_IMAGE" "$POSTGRES_IMAGE"; do
  kind load docker-image --name "$CLUSTER" "$image" >/dev/null
done
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$PREFIX" || true

say "keys and the Secret (values only ever in files, never on a command line)"
ssh-keygen -q -t ed25519 -N "" -C provisioner@e2e -f "$work/provisioner"
ssh-keygen -q -t ed25519 -N "" -C orchestrator@e2e -f "$work/orchestrator"
for name in redis-password database-password credentials-key; do
  openssl rand -hex 24 | tr -d '\n' >"$work/$name"
done
kubectl --context "kind-$CLUSTER" get namespace "$NS" >/dev/null 2>&1 \
  || kubectl --context "kind-$CLUSTER" create namespace "$NS" >/dev/null
"${KUBECTL[@]}" delete secret infra-service-e2e --ignore-not-found >/dev/null
"${KUBECTL[@]}" create secret generic infra-service-e2e \
  --from-file=ssh-private-key="$work/provisioner" \
  --from-file=redis-password="$work/redis-password" \
  --from-file=database-password="$work/database-password" \
  --from-file=credentials-key="$work/credentials-key" >/dev/null
"${KUBECTL[@]}" create configmap e2e-target-keys --from-file=authorized_keys="$work/provisioner.pub" \
  --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f - >/dev/null
# What must never show up in a Job object or a log: each secret, and a line of the key.
{ cat "$work/redis-password"; echo; cat "$work/database-password"; echo
  cat "$work/credentials-key"; echo; sed -n 2p "$work/provisioner"; } >"$work/secret-values"

say "Redis, PostgreSQL and the SSH target"
sed -e "s#@REDIS_IMAGE@#$REDIS_IMAGE#" -e "s#@POSTGRES_IMAGE@#$POSTGRES_IMAGE#" \
    -e "s#@TARGET_IMAGE@#$TARGET_IMAGE#" scripts/kind/services.yaml | "${KUBECTL[@]}" apply -f -
for deployment in redis postgres target; do
  "${KUBECTL[@]}" rollout status "deployment/$deployment" --timeout=180s
done

say "helm install"
helm --kube-context "kind-$CLUSTER" upgrade --install "$RELEASE" charts/infra-service \
  --namespace "$NS" -f scripts/kind/values.yaml \
  --set-string orchestratorSshPublicKey="$(cat "$work/orchestrator.pub")" \
  --set-string runner.env.SETUP_PLAYBOOK="$PLAYBOOK" \
  --wait --timeout 5m

say "helm test: dispatcher ready, Redis and PostgreSQL answer with the configured credentials"
helm --kube-context "kind-$CLUSTER" test "$RELEASE" --namespace "$NS" --logs --timeout 3m

say "database: migrations and the target server"
"${KUBECTL[@]}" delete job e2e-prepare --ignore-not-found >/dev/null
sed -e "s#@RUNNER_IMAGE@#${PREFIX}runner:$TAG#" -e "s#@SERVER_HANDLE@#$HANDLE#" \
    -e "s#@NAMESPACE@#$NS#" scripts/kind/prepare-job.yaml | "${KUBECTL[@]}" apply -f -
"${KUBECTL[@]}" wait --for=condition=complete job/e2e-prepare --timeout=300s
"${KUBECTL[@]}" logs job/e2e-prepare

say "push one message"
request_id="e2e-$(openssl rand -hex 6)"
"${KUBECTL[@]}" exec "deployment/$RELEASE" -- \
  python -m dispatcher enqueue "$HANDLE" --request-id "$request_id"

say "wait for the result of $request_id (up to $TIMEOUT s)"
result=""
deadline=$((SECONDS + TIMEOUT))
while [ $SECONDS -lt $deadline ]; do
  result=$("${KUBECTL[@]}" exec "deployment/$RELEASE" -- python -m dispatcher results -n 100 \
           2>/dev/null | grep -F "\"request_id\":\"$request_id\"" || true)
  [ -n "$result" ] && break
  sleep 5
done
[ -n "$result" ] || fail "no result for $request_id after $TIMEOUT s"
echo "$result"

job=$("${KUBECTL[@]}" get jobs -l "infra-service.io/request-id=$request_id" \
      -o jsonpath='{.items[0].metadata.name}')
db_status=$("${KUBECTL[@]}" exec deployment/postgres -- \
            psql -U infra -d infra -tAc "SELECT status FROM servers WHERE handle = '$HANDLE'")

say "the SRE's view"
runners="app.kubernetes.io/name=infra-service-runner,app.kubernetes.io/instance=$RELEASE"
helm --kube-context "kind-$CLUSTER" status "$RELEASE" -n "$NS" | sed -n '1,8p'
"${KUBECTL[@]}" get deployment,pods -l "app.kubernetes.io/instance=$RELEASE" -o wide
"${KUBECTL[@]}" get jobs -l "$runners,infra-service.io/server-handle=$HANDLE" \
  -L infra-service.io/request-id,infra-service.io/action
"${KUBECTL[@]}" get events --field-selector "involvedObject.name=$job" --sort-by=.lastTimestamp
echo "--- kubectl logs job/$job (last 15 lines)"
"${KUBECTL[@]}" logs "job/$job" --tail=15
echo "--- python -m dispatcher status"
"${KUBECTL[@]}" exec "deployment/$RELEASE" -- python -m dispatcher status
echo "--- metrics (infra_service_ lines)"
"${KUBECTL[@]}" exec "deployment/$RELEASE" -- python -c \
  "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())" \
  | grep -E '^infra_service_' | head -n 20 || true
echo "--- DB status of $HANDLE: $db_status"

say "checks"
grep -qF '"status":"succeeded"' <<<"$result" || fail "result is not succeeded"
[ "$db_status" = READY ] || fail "server status is '$db_status', expected READY"
"${KUBECTL[@]}" exec deployment/target -- cat /root/.ssh/authorized_keys \
  | grep -qF "$(cut -d' ' -f2 "$work/orchestrator.pub")" || fail "deploy key not on the target"
"${KUBECTL[@]}" get job "$job" -o json >"$work/job.json"
if grep -qF -f "$work/secret-values" "$work/job.json"; then fail "a secret value is in Job $job"; fi
token=$("${KUBECTL[@]}" get pods -l "job-name=$job" -o jsonpath='{.items[0].spec.automountServiceAccountToken}')
[ "$token" = false ] || fail "runner pod mounts a service account token"
"${KUBECTL[@]}" logs "job/$job" >"$work/runner.log"
if grep -qF -f "$work/secret-values" "$work/runner.log"; then fail "a secret value is in the runner log"; fi
if kubectl --context "kind-$CLUSTER" get clusterrolebindings -o name | grep -q "$RELEASE"; then
  fail "the release created cluster-wide RBAC"
fi

echo
echo "END-TO-END PASSED: $request_id -> Job $job -> succeeded, $HANDLE is $db_status"
