"""Chart parts that make an install work and stay operable: generated names within 63
characters and unique for 53-character release names, NetworkPolicy destinations and ports,
the migration hook Job (its command run against a real PostgreSQL), the `helm test` pods (their
checks run against real services), and the version label on runner Jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from collections import Counter
from typing import Any

import asyncpg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.chart import CHART_DIR, FULL_VALUES, Rendered, job_from_chart, render
from tests.support.dispatch import REPO
from tests.support.services import PostgresServer, RedisServer, free_port

EVERYTHING = {**FULL_VALUES, "prometheusRule": {"enabled": True},
              "grafanaDashboard": {"enabled": True}, "serviceAccount": {"create": True},
              "runner": {**FULL_VALUES["runner"], "serviceAccount": {"create": True, "name": ""}}}
APP_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]


def _names(rendered: Rendered) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]


def _referenced_names(rendered: Rendered) -> list[str]:
    """Names objects refer to each other by: they must exist as rendered."""
    deployment = rendered.one("Deployment")
    env = {e["name"]: e.get("value") for e in
           deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    return [deployment["spec"]["template"]["spec"]["serviceAccountName"],
            env["DISPATCHER_JOB_SERVICE_ACCOUNT_NAME"],
            rendered.one("RoleBinding")["roleRef"]["name"],
            rendered.one("RoleBinding")["subjects"][0]["name"]]


@pytest.mark.parametrize("length", [1, 20, 42, 48, 53])
def test_names_fit_and_stay_unique(length: int) -> None:
    release = ("r" + "x" * 60)[:length]
    rendered = render(EVERYTHING, name=release)
    names = _names(rendered)
    for kind, name in names:
        assert len(name) <= 63, (kind, name)
    duplicates = [k for k, n in Counter(names).items() if n > 1]
    assert not duplicates
    accounts = [n for k, n in names if k == "ServiceAccount"]
    assert len(set(accounts)) == 2, accounts
    existing = {n for _, n in names}
    for name in _referenced_names(rendered):
        assert name in existing, name
    metrics = rendered.one("Service")["metadata"]["name"]
    assert metrics.endswith("-metrics")
    assert f'job="{metrics}"' in rendered.one("PrometheusRule")["spec"]["groups"][0][
        "rules"][0]["expr"]


# Helm release names: DNS-1123 labels of at most 53 characters.
RELEASE_NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,51}[a-z0-9])?", fullmatch=True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RELEASE_NAMES, min_size=2, max_size=2, unique=True))
def test_any_two_releases_fit_and_do_not_collide(releases: list[str]) -> None:
    rendered = [_names(render(EVERYTHING, name=r)) for r in releases]
    for names in rendered:
        assert all(len(n) <= 63 for _, n in names), names
        assert len(set(names)) == len(names)
    # Two releases in one namespace never share an object name (Helm would refuse).
    assert not {n for _, n in rendered[0]} & {n for _, n in rendered[1]}


def test_two_long_releases_get_distinct_names() -> None:
    stem = "platform-provisioning-production-eu-central-" + "x" * 7  # 51
    one = {n for _, n in _names(render(EVERYTHING, name=stem + "-a"))}
    two = {n for _, n in _names(render(EVERYTHING, name=stem + "-b"))}
    assert len(stem + "-a") == 53
    assert not one & two


def _egress(rendered: Rendered, suffix: str) -> list[dict[str, Any]]:
    return rendered.one("NetworkPolicy", suffix)["spec"]["egress"]


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def test_network_policy_dns_destinations_and_ports_from_urls() -> None:
    rendered = render(FULL_VALUES)  # Redis on 6380 (rediss://...:6380/2)
    dispatcher, runner = _egress(rendered, "infra-service-dispatcher"), _egress(rendered, "-runner")
    for rules in (dispatcher, runner):
        dns = rules[0]
        assert _ports(dns) == {53}
        peer = dns["to"][0]
        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"}
    # PostgreSQL last: the run history (dispatcher.history, on by default).
    assert [_ports(r) for r in dispatcher] == [{53}, {6380}, {443, 6443}, {5432}]
    assert [_ports(r) for r in runner] == [{53}, {6380}, {5432}, {22}, {443}]

    custom = {**FULL_VALUES,
              "redis": {**FULL_VALUES["redis"], "url": "redis://cache.data:7000/1"},
              "database": {**FULL_VALUES["database"],
                           "url": "postgresql://infra@pg.data:6543/infra"},
              "networkPolicy": {"enabled": True, "sshPorts": [22, 2222], "destinations": {
                  "redis": [{"podSelector": {"matchLabels": {"app": "redis"}}}],
                  "postgres": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                  "apiServer": [{"ipBlock": {"cidr": "172.18.0.2/32"}}],
                  "sshTargets": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}}}
    rendered = render(custom)
    dispatcher, runner = _egress(rendered, "infra-service-dispatcher"), _egress(rendered, "-runner")
    assert dispatcher[1] == {"to": [{"podSelector": {"matchLabels": {"app": "redis"}}}],
                             "ports": [{"port": 7000, "protocol": "TCP"}]}
    assert dispatcher[2]["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert dispatcher[3] == runner[2]  # the run history: the same PostgreSQL
    assert runner[2] == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                         "ports": [{"port": 6543, "protocol": "TCP"}]}
    assert runner[3]["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert _ports(runner[3]) == {22, 2222}
    assert "to" not in runner[4]  # provider API: any destination, port 443 only


def test_helm_test_pod_may_scrape_when_metrics_sources_are_restricted() -> None:
    rendered = render(FULL_VALUES)  # metricsFrom: the monitoring namespace only
    peers = rendered.one("NetworkPolicy", "infra-service-dispatcher")["spec"]["ingress"][0]["from"]
    test_pod = rendered.one("Pod", "-test-dispatcher")["metadata"]["labels"]
    assert any("podSelector" in p and "namespaceSelector" not in p
               and p["podSelector"]["matchLabels"].items() <= test_pod.items() for p in peers)
    assert any("namespaceSelector" in p for p in peers)


def test_runner_jobs_carry_the_app_version(monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_from_chart(render(), monkeypatch)
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == APP_VERSION
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == \
        APP_VERSION


# ---- the migration hook and the helm test pods ----

def _container(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else obj["spec"]
    (container,) = spec["containers"]
    return container


def _assert_hardened(obj: dict[str, Any]) -> None:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else obj["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = _container(obj)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_migration_hook_renders_and_can_be_turned_off() -> None:
    rendered = render(FULL_VALUES)
    job = rendered.one("Job", "-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    container = _container(job)
    assert container["image"] == "registry.example.com/platform/infra-service-runner:0.1.0"
    assert container["args"] == ["migrate"]
    assert "command" not in container  # tini stays PID 1
    _assert_hardened(job)
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "prod-infra-service", "key": "db-password", "optional": False}
    assert not any(o["kind"] == "Job" for o in render({"migrations": {"enabled": False}}).objects)
    # A chart-made Secret must exist before the hook runs: it becomes an earlier hook.
    made = render({"createSecret": {"enabled": True, "data": {"database-password": "x"}}})
    assert made.one("Secret")["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"


def test_helm_test_pods_render() -> None:
    rendered = render(FULL_VALUES)
    pods = {p["metadata"]["name"].rsplit("-", 1)[1]: p for p in rendered.of_kind("Pod")}
    assert set(pods) == {"dispatcher", "redis", "postgres"}
    for pod in pods.values():
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["spec"]["restartPolicy"] == "Never"
        _assert_hardened(pod)
    assert _container(pods["redis"])["args"] == ["status"]
    redis_env = {e["name"]: e for e in _container(pods["redis"])["env"]}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    assert not render({"helmTests": {"enabled": False}}).of_kind("Pod")


def _env_of(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would give it, Secret keys resolved."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


@pytest.fixture
def fresh_db(pg_srv: PostgresServer) -> str:
    """A database no migration ran on (a fresh install)."""
    name = f"hook_{free_port()}"
    pg_srv.ensure_database(name)
    return name


def _pg_values(pg_srv: PostgresServer, database: str) -> dict[str, Any]:
    return {"database": {"url": pg_srv.dsn(database), "password": {"key": "database-password"}},
            "existingSecret": "infra"}


async def test_migration_hook_and_postgres_test_against_real_postgres(
        pg_srv: PostgresServer, fresh_db: str) -> None:
    rendered = render(_pg_values(pg_srv, fresh_db))
    secrets = {"database-password": pg_srv.password}
    check = _container(rendered.one("Pod", "-test-postgres"))
    assert check["command"] == ["python", "-c"]

    def run_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", check["args"][0]],
                              env=_env_of(check, secrets), capture_output=True, text=True,
                              timeout=60)

    # Before the hook: the test pod says the schema is missing (one line, non-zero).
    before = run_check()
    assert before.returncode == 1 and "the migration hook has not run" in before.stdout

    # The hook Job's container: the runner image's entrypoint is python -m runner_image.
    migrate = _container(rendered.one("Job", "-migrate"))
    env = _env_of(migrate, secrets)
    for _ in range(2):  # pre-install, then pre-upgrade: idempotent
        done = subprocess.run([sys.executable, "-m", "runner_image", *migrate["args"]],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    conn = await asyncpg.connect(pg_srv.dsn(fresh_db), password=pg_srv.password)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()
    after = run_check()
    assert after.returncode == 0 and after.stdout.startswith("OK: PostgreSQL at ")

    wrong = subprocess.run([sys.executable, "-c", check["args"][0]],
                           env=_env_of(check, {"database-password": "wrong-pw-4b1d"}),
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stdout.startswith("FAIL: PostgreSQL at ")
    assert "wrong-pw-4b1d" not in wrong.stdout + wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_redis_test_pod_command_against_real_redis(redis_srv: RedisServer) -> None:
    values = {"redis": {"url": redis_srv.url, "password": {"key": "redis-password"}}}
    pod = _container(render(values).one("Pod", "-test-redis"))
    good = _env_of(pod, {"redis-password": redis_srv.password or ""})
    done = subprocess.run([sys.executable, "-m", "dispatcher", *pod["args"]], env=good, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    bad = _env_of(pod, {"redis-password": "nope-7c1e"})
    done = subprocess.run([sys.executable, "-m", "dispatcher", *pod["args"]], env=bad, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "cannot reach Redis" in done.stderr
    assert "Traceback" not in done.stderr


def test_dispatcher_test_pod_check_against_a_served_metrics_page() -> None:
    from dispatcher.observability.health_server import close_metrics, serve_metrics
    from dispatcher.observability.metrics import Metrics

    metrics = Metrics()
    port = free_port()
    server = serve_metrics("127.0.0.1", port, metrics.registry)
    try:
        pod = _container(render().one("Pod", "-test-dispatcher"))
        url = f"http://127.0.0.1:{port}/metrics"
        service_url = next(e["value"] for e in pod["env"] if e["name"] == "METRICS_URL")
        assert urllib.parse.urlparse(service_url).path == "/metrics"
        env = {**_env_of(pod, {}), "METRICS_URL": url}

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-c", pod["args"][0]], env=env,
                                  capture_output=True, text=True, timeout=60)
        metrics.ready.set(0)
        assert check().returncode == 1
        metrics.ready.set(1)
        done = check()
        assert done.returncode == 0 and done.stdout.startswith("OK: dispatcher ready")
    finally:
        close_metrics(server)


def test_migration_and_helm_test_pods_have_hook_policies_created_before_them() -> None:
    """In a default-deny namespace the migration hook must reach PostgreSQL and each helm
    test pod what it checks; their policies are hooks of the same phase with a lower weight,
    so they exist before the pods start. (What each test pod may reach, computed from every
    policy that selects it: tests/deploy/test_chart_policies.py.)"""
    rendered = render(FULL_VALUES)
    migration = rendered.one("Job", "-migrate")
    pairs = [(rendered.one("NetworkPolicy", "-migrate"),
              migration["spec"]["template"]["metadata"]["labels"], migration)]
    for check in ("dispatcher", "redis", "postgres"):
        pod = rendered.one("Pod", f"-test-{check}")
        pairs.append((rendered.one("NetworkPolicy", f"-test-{check}"), pod["metadata"]["labels"],
                      pod))
    for policy, pod_labels, owner in pairs:
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        hooks, owner_hooks = policy["metadata"]["annotations"], owner["metadata"]["annotations"]
        assert hooks["helm.sh/hook"] == owner_hooks["helm.sh/hook"]
        assert int(hooks["helm.sh/hook-weight"]) < int(owner_hooks.get("helm.sh/hook-weight", 0))
        assert policy["spec"]["ingress"] == []
    # Nothing but DNS and PostgreSQL (port from database.url) for the migration.
    assert [_ports(r) for r in pairs[0][0]["spec"]["egress"]] == [{53}, {5432}]
    # Not rendered when NetworkPolicies are off.
    assert not render({**FULL_VALUES, "networkPolicy": {"enabled": False}}).of_kind(
        "NetworkPolicy")
