"""The chart's PrometheusRule and Grafana dashboard, checked with Prometheus' own tools.

Every alert is unit-tested with `promtool test rules` on the rules the chart renders. Each
scenario starts from a healthy dispatcher (every series an alert reads, at rest), changes what
one cause changes, and states the alerts that must fire at the evaluation time, with every
label an Alertmanager route would use; every other alert of the chart must stay silent, so a
scenario also proves that one cause fires one alert. promtool compares annotations too, so
the logic is tested on the rules without annotations; the annotation templates are checked by
`promtool check rules` on the full rules (and each runbook_url against the chart's README).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import CHART_DIR, NAMESPACE, RELEASE, render

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus; scripts/install-deps.sh)")

JOB = f"{RELEASE}-infra-service-metrics"
SEL = {"job": JOB, "namespace": NAMESPACE, "instance": "a"}
JOB_NS = {"job": JOB, "namespace": NAMESPACE}
PAGE = {"severity": "critical"}
TICKET = {"severity": "warning"}
ALERTS = ("InfraServiceDispatcherDown", "InfraServiceDispatcherNotReady",
          "InfraServiceQueueStateMissing", "InfraServiceQueueStalled",
          "InfraServiceJobCreatesFailing", "InfraServiceClaimedNotLaunched",
          "InfraServicePlatformFailures", "InfraServiceUnreachableSpike",
          "InfraServiceResultsStopped", "InfraServiceSaturated",
          "InfraServiceQueueOldestMessageTooOld", "InfraServiceJobOverDeadline",
          "InfraServiceDeadLettersUntriaged", "InfraServiceFailureRatioHigh",
          "InfraServiceServerFailed", "InfraServiceLoopRestarts",
          "InfraServiceRedisReconnects")
MINUTES = 130  # samples (one a minute) of every scenario's series

Labels = tuple[tuple[str, str], ...]


def rule_groups(values: dict[str, Any] | None = None, *, name: str = RELEASE,
                namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    rendered = render({"prometheusRule": {"enabled": True, **(values or {})}}, name=name,
                      namespace=namespace)
    groups: list[dict[str, Any]] = rendered.one("PrometheusRule")["spec"]["groups"]
    return groups


def key(name: str, **labels: str) -> tuple[str, Labels]:
    return name, tuple(sorted({**SEL, **labels}.items()))


def healthy() -> dict[tuple[str, Labels], str]:
    """A dispatcher at work and at rest: one Job a minute created and reported, nothing
    queued, nothing failing."""
    n = MINUTES
    return {
        key("up"): f"1x{n}",
        key("infra_service_ready"): f"1x{n}",
        key("infra_service_queue_state_exporter"): f"1x{n}",
        key("infra_service_queue_messages"): f"0x{n}",
        key("infra_service_queue_oldest_age_seconds"): f"0x{n}",
        key("infra_service_oldest_claim_age_seconds"): f"0x{n}",
        key("infra_service_oldest_in_flight_age_seconds"): f"60x{n}",
        key("infra_service_jobs_in_flight"): f"1x{n}",
        key("infra_service_max_in_flight"): f"10x{n}",
        key("infra_service_dead_letter_messages"): f"0x{n}",
        key("infra_service_messages_received_total"): f"0+1x{n}",
        key("infra_service_jobs_created_total"): f"0+1x{n}",
        key("infra_service_kube_api_responses_total", verb="create", code="201"): f"0+1x{n}",
        key("infra_service_kube_api_responses_total", verb="create", code="403"): f"0x{n}",
        key("infra_service_results_total", status="succeeded", kind="none"): f"0+1x{n}",
        key("infra_service_results_total", status="unreachable",
            kind="ssh_unreachable"): f"0x{n}",
        key("infra_service_results_total", status="failed", kind="image_pull"): f"0x{n}",
        key("infra_service_dead_letters_total", reason="not_json"): f"0x{n}",
        key("infra_service_dead_letters_total", reason="duplicate"): f"0x{n}",
        key("infra_service_loop_restarts_total", loop="pop"): f"0x{n}",
        key("infra_service_redis_reconnects_total"): f"0x{n}",
    }


# What only the replica holding the exporter lease exports, read from Redis.
REDIS_DERIVED = ("infra_service_queue_messages", "infra_service_queue_oldest_age_seconds",
                 "infra_service_oldest_claim_age_seconds",
                 "infra_service_oldest_in_flight_age_seconds", "infra_service_jobs_in_flight",
                 "infra_service_dead_letter_messages", "infra_service_results_total",
                 "infra_service_dead_letters_total",
                 "infra_service_server_last_failure_timestamp_seconds")


def cut(after: int, names: tuple[str, ...] | None = None,
        keep: tuple[str, ...] = ()) -> dict[tuple[str, Labels], str | None]:
    """The healthy series named (all but ``keep`` when None) end at minute ``after``."""
    out: dict[tuple[str, Labels], str | None] = {}
    for (name, labels), values in healthy().items():
        if (names is None or name in names) and name not in keep:
            start = values.partition("x")[0]  # "1" or "0+1" (a counter's growth)
            out[(name, labels)] = f"{start}x{after}"
    return out


def _series(inputs: dict[tuple[str, Labels], str | None]) -> list[dict[str, str]]:
    out = []
    for (name, labels), values in inputs.items():
        if values is None:
            continue  # the scenario removed this series
        inner = ", ".join(f'{k}="{v}"' for k, v in labels)
        out.append({"series": f"{name}{{{inner}}}", "values": values})
    return out


def scenario(changes: dict[tuple[str, Labels], str | None], at: str,
             fires: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """One promtool test: the healthy series with ``changes`` (None removes a series); at
    ``at`` exactly the alerts in ``fires`` fire, with these label sets, and no other."""
    unknown = set(fires) - set(ALERTS)
    assert not unknown, unknown
    return {"interval": "1m", "input_series": _series({**healthy(), **changes}),
            "alert_rule_test": [
                {"eval_time": at, "alertname": alert,
                 "exp_alerts": [{"exp_labels": labels} for labels in fires.get(alert, [])]}
                for alert in ALERTS]}


def rising(per_minute: float = 1, *, after: int = 0, until: int = MINUTES) -> str:
    """A counter flat at 0 until minute ``after``, then growing ``per_minute`` until
    ``until``, then flat."""
    parts = [f"0x{after}"] if after else []
    grow = until - after
    parts.append(f"0+{per_minute}x{grow}")
    if until < MINUTES:
        parts.append(f"{per_minute * grow}x{MINUTES - until}")
    return " ".join(parts)


def flapping(low: str, high: str) -> str:
    """Alternating every minute, the whole time."""
    return " ".join([low, high] * (MINUTES // 2 + 1))


N = MINUTES
CASES: list[tuple[str, dict[str, Any]]] = [
    ("healthy: nothing fires", scenario({}, "120m", {})),
    # -- the dispatcher itself
    ("down fires", scenario({key("up"): f"1x10 0x{N - 10}"}, "20m",
                            {"InfraServiceDispatcherDown": [{**PAGE, **SEL}]})),
    ("down is pending for its for", scenario({key("up"): f"1x10 0x{N - 10}"}, "13m", {})),
    ("no target at all fires with namespace and job", scenario(
        {key("up"): None}, "20m", {"InfraServiceDispatcherDown": [{**PAGE, **JOB_NS}]})),
    ("flapping scrapes do not page", scenario({key("up"): flapping("0", "1")}, "60m", {})),
    ("not ready fires per replica", scenario(
        {key("infra_service_ready"): f"1x10 0x{N - 10}"}, "20m",
        {"InfraServiceDispatcherNotReady": [{**PAGE, **SEL}]})),
    ("flapping readiness does not page", scenario(
        {key("infra_service_ready"): flapping("0", "1")}, "60m", {})),
    ("redis down: the queue state is missing, one alert", scenario(
        {**cut(10, REDIS_DERIVED),
         key("infra_service_ready"): f"1x10 0x{N - 10}",
         key("infra_service_queue_state_exporter"): f"1x10 0x{N - 10}",
         key("infra_service_redis_reconnects_total"): rising(2, after=10),
         key("infra_service_loop_restarts_total", loop="pop"): rising(1, after=10),
         key("infra_service_messages_received_total"): rising(1, until=10),
         key("infra_service_jobs_created_total"): rising(1, until=10)},
        "30m", {"InfraServiceQueueStateMissing": [{**PAGE, **JOB_NS}]})),
    ("a replica without the lease exports no state, the other does: quiet", scenario(
        {key("infra_service_queue_state_exporter", instance="b"): f"0x{N}",
         key("up", instance="b"): f"1x{N}", key("infra_service_ready", instance="b"): f"1x{N}"},
        "60m", {})),
    ("dispatcher down is not also queue state missing or stalled", scenario(
        {**cut(10, keep=("up",)), key("up"): f"1x10 0x{N - 10}"},
        "30m", {"InfraServiceDispatcherDown": [{**PAGE, **SEL}]})),
    # -- the queue
    ("stalled queue fires", scenario(
        {key("infra_service_queue_messages"): f"0x10 5x{N - 10}",
         key("infra_service_messages_received_total"): rising(1, until=10),
         key("infra_service_jobs_created_total"): rising(1, until=10)},
        "40m", {"InfraServiceQueueStalled": [{**PAGE, **JOB_NS}]})),
    ("queue moving is not stalled", scenario(
        {key("infra_service_queue_messages"): f"0x10 5x{N - 10}"}, "40m", {})),
    ("saturated: at the cap with messages queued, a ticket and not a stall", scenario(
        {key("infra_service_queue_messages"): f"0x10 5x{N - 10}",
         key("infra_service_jobs_in_flight"): f"1x10 10x{N - 10}",
         key("infra_service_messages_received_total"): rising(1, until=10),
         key("infra_service_queue_oldest_age_seconds"): f"0x10 0+60x{N - 10}"},
        "50m", {"InfraServiceSaturated": [{**TICKET, **JOB_NS}]})),
    ("at the cap with an empty queue is not saturated", scenario(
        {key("infra_service_jobs_in_flight"): f"10x{N}"}, "60m", {})),
    ("old message while the queue moves below the cap", scenario(
        {key("infra_service_queue_messages"): f"0x10 50x{N - 10}",
         key("infra_service_queue_oldest_age_seconds"): f"0x10 0+60x{N - 10}"},
        "60m", {"InfraServiceQueueOldestMessageTooOld": [{**TICKET, **JOB_NS}]})),
    ("young messages are quiet", scenario(
        {key("infra_service_queue_messages"): f"0x10 50x{N - 10}",
         key("infra_service_queue_oldest_age_seconds"): f"0x10 30x{N - 10}"}, "60m", {})),
    # -- launching Jobs
    ("creates refused with 403 fire with the code", scenario(
        {key("infra_service_kube_api_responses_total", verb="create", code="201"):
             rising(1, until=10),
         key("infra_service_kube_api_responses_total", verb="create", code="403"):
             rising(3, after=10),
         key("infra_service_jobs_created_total"): rising(1, until=10),
         key("infra_service_ready"): f"1x10 0x{N - 10}",
         key("infra_service_oldest_claim_age_seconds"): f"0x10 0+60x{N - 10}"},
        "40m", {"InfraServiceJobCreatesFailing": [{**PAGE, **JOB_NS, "code": "403"}]})),
    ("an occasional 429 among successes does not page", scenario(
        {key("infra_service_kube_api_responses_total", verb="create", code="429"):
             " ".join(f"{i // 7}" for i in range(N))}, "100m", {})),
    ("claimed but not launched while all is ready", scenario(
        {key("infra_service_oldest_claim_age_seconds"): f"0x10 0+60x{N - 10}"}, "30m",
        {"InfraServiceClaimedNotLaunched": [{**PAGE, **JOB_NS}]})),
    ("a create that hangs: claimed not launched, not also a stalled queue", scenario(
        {key("infra_service_queue_messages"): f"0x10 5x{N - 10}",
         key("infra_service_messages_received_total"): rising(1, until=10),
         key("infra_service_jobs_created_total"): rising(1, until=10),
         key("infra_service_oldest_claim_age_seconds"): f"0x10 0+60x{N - 10}"},
        "40m", {"InfraServiceClaimedNotLaunched": [{**PAGE, **JOB_NS}]})),
    ("a claim a few seconds old is quiet", scenario(
        {key("infra_service_oldest_claim_age_seconds"): f"3x{N}"}, "60m", {})),
    ("a Job past its deadline", scenario(
        {key("infra_service_oldest_in_flight_age_seconds"): f"60x10 0+60x{N - 10}"}, "90m",
        {"InfraServiceJobOverDeadline": [{**TICKET, **JOB_NS}]})),
    ("Jobs within their deadline are quiet", scenario(
        {key("infra_service_oldest_in_flight_age_seconds"): f"3000x{N}"}, "90m", {})),
    ("results stop while Jobs are created", scenario(
        {key("infra_service_results_total", status="succeeded", kind="none"): f"0x{N}"},
        "90m", {"InfraServiceResultsStopped": [{**PAGE, **JOB_NS}]})),
    ("results within the runner's deadline are quiet", scenario(
        {key("infra_service_results_total", status="succeeded", kind="none"):
             rising(1, after=40)}, "90m", {})),
    # -- outcomes
    ("platform failures page by kind", scenario(
        {key("infra_service_results_total", status="failed", kind="image_pull"):
             rising(1, after=60, until=65)},
        "70m", {"InfraServicePlatformFailures": [{**PAGE, **JOB_NS, "kind": "image_pull"}]})),
    ("two image pull failures are quiet", scenario(
        {key("infra_service_results_total", status="failed", kind="image_pull"):
             rising(1, after=60, until=62)}, "70m", {})),
    ("unreachable spike pages once, not also as a failure ratio", scenario(
        {key("infra_service_results_total", status="unreachable", kind="ssh_unreachable"):
             rising(1, after=60, until=70),
         key("infra_service_results_total", status="succeeded", kind="none"): rising(0.1)},
        "72m", {"InfraServiceUnreachableSpike": [{**PAGE, **JOB_NS}]})),
    ("a few unreachable servers are tickets naming each", scenario(
        {key("infra_service_results_total", status="unreachable", kind="ssh_unreachable"):
             rising(1, after=60, until=62),
         key("infra_service_server_last_failure_timestamp_seconds", server_handle="web-7",
             status="unreachable", kind="ssh_unreachable"): f"3600x{N}"},
        "72m", {"InfraServiceServerFailed": [{**TICKET, **JOB_NS, "server_handle": "web-7",
                                              "status": "unreachable",
                                              "kind": "ssh_unreachable"}]})),
    ("a server failed by the platform is not a server ticket", scenario(
        {key("infra_service_server_last_failure_timestamp_seconds", server_handle="web-8",
             status="failed", kind="image_pull"): f"3600x{N}"}, "72m", {})),
    ("five kinds at 15 % each: the overall ratio fires", scenario(
        {**{key("infra_service_results_total", status="failed", kind=kind): rising(0.15)
            for kind in ("play_failed", "unknown_server", "ssh_auth_failed",
                         "deploy_key_failed", "provider_error")},
         key("infra_service_results_total", status="succeeded", kind="none"): rising(0.25)},
        "100m", {"InfraServiceFailureRatioHigh": [{**TICKET, **JOB_NS}]})),
    ("plans are neither successes nor failures of the ratio", scenario(
        {key("infra_service_results_total", status="planned", kind="none"): rising(1),
         key("infra_service_results_total", status="succeeded", kind="none"): rising(0.25)},
        "100m", {})),
    ("mostly successes are quiet", scenario(
        {key("infra_service_results_total", status="failed", kind="play_failed"):
             rising(0.1)}, "100m", {})),
    ("too few results are quiet", scenario(
        {key("infra_service_results_total", status="succeeded", kind="none"):
             rising(0.05),
         key("infra_service_results_total", status="failed", kind="play_failed"):
             rising(0.05),
         key("infra_service_jobs_created_total"): rising(0.1)}, "100m", {})),
    ("dead letters waiting for triage, by reason", scenario(
        {key("infra_service_dead_letters_total", reason="not_json"): rising(1, after=10,
                                                                              until=12),
         key("infra_service_dead_letter_messages"): f"0x10 2x{N - 10}"},
        "60m", {"InfraServiceDeadLettersUntriaged": [{**TICKET, **JOB_NS,
                                                      "reason": "not_json"}]})),
    ("a duplicate dead letter is quiet", scenario(
        {key("infra_service_dead_letters_total", reason="duplicate"): rising(1, after=10,
                                                                               until=11),
         key("infra_service_dead_letter_messages"): f"0x10 1x{N - 10}"}, "60m", {})),
    ("a triaged dead-letter list is quiet", scenario(
        {key("infra_service_dead_letters_total", reason="not_json"): rising(1, after=10,
                                                                              until=12),
         key("infra_service_dead_letter_messages"): f"0x10 2x10 0x{N - 20}"}, "60m", {})),
    # -- loops and Redis connections
    ("a loop that keeps crashing", scenario(
        {key("infra_service_loop_restarts_total", loop="ends"): rising(1, after=10)},
        "30m", {"InfraServiceLoopRestarts": [{**TICKET, **JOB_NS, "loop": "ends"}]})),
    ("one loop restart is quiet", scenario(
        {key("infra_service_loop_restarts_total", loop="ends"): rising(1, after=10,
                                                                         until=11)},
        "30m", {})),
    ("Redis connections keep dropping", scenario(
        {key("infra_service_redis_reconnects_total"): rising(1, after=10)}, "40m",
        {"InfraServiceRedisReconnects": [{**TICKET, **JOB_NS}]})),
    ("a Redis blip is quiet", scenario(
        {key("infra_service_redis_reconnects_total"): rising(2, after=10, until=11)},
        "40m", {})),
]


def _without_annotations(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = copy.deepcopy(groups)
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return groups


def promtool_test(tmp_path: Path, rule_files: dict[str, list[dict[str, Any]]],
                  tests: list[dict[str, Any]]) -> None:
    for name, groups in rule_files.items():
        (tmp_path / name).write_text(yaml.safe_dump({"groups": _without_annotations(groups)}))
    spec = tmp_path / "test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": sorted(rule_files),
                                    "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_in_a_scenario_and_is_silent_in_another() -> None:
    names = [r["alert"] for g in rule_groups() for r in g["rules"]]
    assert sorted(names) == sorted(ALERTS)
    fired = {alert for _, c in CASES for t in c["alert_rule_test"] if t["exp_alerts"]
             for alert in [t["alertname"]]}
    assert fired == set(ALERTS)


@pytest.mark.parametrize(("name", "test"), CASES, ids=[n for n, _ in CASES])
def test_alert_scenario(name: str, test: dict[str, Any], tmp_path: Path) -> None:
    promtool_test(tmp_path, {"rules.yml": rule_groups()}, [test])


def test_every_alert_is_actionable() -> None:
    """namespace and job survive (checked by the scenarios' labels); here what a person
    reads: a `for`, a severity, a summary, a description with a command, and a runbook
    section of the chart's README that says what it means, how to confirm, what to do."""
    readme = (CHART_DIR / "README.md").read_text()
    sections = {m.group(1).lower(): m.start() for m in re.finditer(r"^#### (\w+)", readme,
                                                                    re.MULTILINE)}
    for rule in rule_groups({"runbookBaseUrl": "https://git.example/infra/"})[0]["rules"]:
        alert = rule["alert"]
        assert rule["for"], alert
        assert rule["labels"]["severity"] in ("critical", "warning"), alert
        notes = rule["annotations"]
        assert notes["summary"] and re.search(r"(kubectl|python -m dispatcher) ",
                                              notes["description"]), alert
        url = notes["runbook_url"]
        assert url == f"https://git.example/infra/charts/infra-service/README.md#{alert.lower()}"
        start = sections[alert.lower()]
        body = readme[start:readme.find("\n#### ", start + 1)]
        for part in ("**Means**", "**Confirm**", "**Do**"):
            assert part in body, f"{alert}: {part} missing from its runbook section"


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout + out.stderr


def test_two_releases_in_two_namespaces_give_two_alerts(tmp_path: Path) -> None:
    """Each release's PrometheusRule selects its own series; the same cause in both gives
    two alerts that differ by namespace and job, and a selector spanning both still keeps
    them apart."""
    other_ns, other_release = "platform-b", "prov2"
    other_job = f"{other_release}-infra-service-metrics"
    stalled = {key("infra_service_queue_messages"): f"0x10 5x{N - 10}",
               key("infra_service_messages_received_total"): rising(1, until=10),
               key("infra_service_jobs_created_total"): rising(1, until=10)}
    inputs = {**healthy(), **stalled}
    both = dict(inputs)
    for (name, labels), values in inputs.items():
        moved = dict(labels) | {"namespace": other_ns, "job": other_job}
        both[(name, tuple(sorted(moved.items())))] = values
    expected = [{**PAGE, **JOB_NS}, {**PAGE, "namespace": other_ns, "job": other_job}]
    test = {"interval": "1m", "input_series": _series(dict(both.items())),
            "alert_rule_test": [{"eval_time": "40m", "alertname": "InfraServiceQueueStalled",
                                 "exp_alerts": [{"exp_labels": e} for e in expected]}]}
    promtool_test(tmp_path, {
        "a.yml": rule_groups(),
        "b.yml": rule_groups(name=other_release, namespace=other_ns)}, [test])
    spanning = tmp_path / "spanning"
    spanning.mkdir()
    promtool_test(spanning, {"rules.yml": rule_groups({"selector": 'job=~".+-metrics"'})},
                  [test])


def test_thresholds_are_values() -> None:
    (group,) = rule_groups({"unreachableThreshold": 2, "platformFailureKinds": ["evicted"],
                            "selector": 'job="custom"'})
    exprs = {r["alert"]: r["expr"] for r in group["rules"]}
    assert 'status="unreachable"' in exprs["InfraServiceUnreachableSpike"]
    assert "> 2)" in exprs["InfraServiceUnreachableSpike"]
    assert 'kind=~"evicted"' in exprs["InfraServicePlatformFailures"]
    assert all('job="custom"' in e for e in exprs.values())


def dashboard() -> dict[str, Any]:
    rendered = render({"grafanaDashboard": {"enabled": True}})
    config_map = rendered.one("ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board: dict[str, Any] = json.loads(next(iter(config_map["data"].values())))  # key per release
    return board


def dashboard_queries(selector: str = f'namespace="{NAMESPACE}", job="{JOB}"',
                      rate_interval: str = "5m") -> list[str]:
    """Every panel query with Grafana's variables replaced as Grafana would."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace('namespace="$namespace", job="$job"', selector)
            out.append(expr.replace("$__rate_interval", rate_interval))
    return out


def test_dashboard_panels_and_queries_parse(tmp_path: Path) -> None:
    board = dashboard()
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("queue depth", "oldest queued", "dispatch latency", "jobs in flight",
                  "outcomes", "durations"):
        assert topic in titles
    assert (CHART_DIR / "dashboards" / "infra-service.json").is_file()
    queries = dashboard_queries()
    assert all("$" not in q for q in queries)
    # The product's own prefix: no series of the old generic `infra_` names.
    assert not [q for q in queries if re.search(r"\binfra_(?!service_)", q)]
    # promtool parses every query as a recording rule expression.
    rules = tmp_path / "dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q} for i, q in enumerate(queries)]}]}))
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
