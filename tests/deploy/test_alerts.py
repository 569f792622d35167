"""The chart's PrometheusRule and Grafana dashboard, checked with Prometheus' own tools.

Every alert is unit-tested with `promtool test rules` on the rules the chart renders, once
with series that must fire it and once with series that must not (and, where the rule has a
`for`, before it elapses). promtool compares annotations too, so the alert logic is tested on
the rules without annotations; the annotation templates are checked by `promtool check rules`
on the full rules and rendered by a real Prometheus in tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART_DIR, NAMESPACE, RELEASE, render

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus; scripts/install-deps.sh)")

SEL = {"job": f"{RELEASE}-infra-service-metrics", "namespace": NAMESPACE, "instance": "a"}
ALERTS = ("InfraDispatcherDown", "InfraDispatcherNotReady", "InfraQueueOldestMessageTooOld",
          "InfraQueueBacklog", "InfraDeadLetterGrowth", "InfraJobOverDeadline",
          "InfraFailureRatioHigh", "InfraJobFailureRatioHigh", "InfraUnreachableSpike")


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = render({"prometheusRule": {"enabled": True, **(values or {})}})
    return rendered.one("PrometheusRule")["spec"]["groups"]


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {**SEL, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def case(alert: str, inputs: list[dict[str, str]], at: str,
         fires: list[dict[str, str]] | None) -> dict[str, Any]:
    """One promtool test: `alert` at time `at` fires with these label sets (None: not)."""
    exp = [{"exp_labels": labels} for labels in fires or []]
    return {"interval": "1m", "input_series": inputs,
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": exp}]}


CRIT = {"severity": "critical"}
WARN = {"severity": "warning"}
JOB_NS = {"job": SEL["job"], "namespace": NAMESPACE}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("down fires", case("InfraDispatcherDown", [series("up", "0x10")], "6m",
                        [{**CRIT, **SEL}])),
    ("down pending", case("InfraDispatcherDown", [series("up", "0x10")], "3m", None)),
    ("down absent fires", case("InfraDispatcherDown",
                               [series("infra_ready", "1x10")], "6m", [{**CRIT, **JOB_NS}])),
    ("up stays quiet", case("InfraDispatcherDown", [series("up", "1x10")], "6m", None)),
    ("not ready fires", case("InfraDispatcherNotReady", [series("infra_ready", "0x10")], "6m",
                             [{**CRIT, **SEL}])),
    ("ready stays quiet", case("InfraDispatcherNotReady", [series("infra_ready", "1x10")],
                               "6m", None)),
    ("old message fires", case("InfraQueueOldestMessageTooOld",
                               [series("infra_queue_oldest_age_seconds", "0+60x30")], "25m",
                               [WARN])),
    ("young messages quiet", case("InfraQueueOldestMessageTooOld",
                                  [series("infra_queue_oldest_age_seconds", "30x30")], "25m",
                                  None)),
    ("backlog fires", case("InfraQueueBacklog", [series("infra_queue_depth", "150x30")], "15m",
                           [WARN])),
    ("small queue quiet", case("InfraQueueBacklog", [series("infra_queue_depth", "50x30")],
                               "15m", None)),
    ("dead letters fire", case("InfraDeadLetterGrowth", [series(
        "infra_messages_dead_lettered_total", "0 0 0 1 1 1 1 1", reason="not_json")], "5m",
        [WARN])),
    ("no dead letters quiet", case("InfraDeadLetterGrowth", [series(
        "infra_messages_dead_lettered_total", "0x10", reason="not_json")], "5m", None)),
    ("overdue job fires", case("InfraJobOverDeadline",
                               [series("infra_oldest_in_flight_seconds", "4000x10")], "6m",
                               [WARN])),
    ("job within deadline quiet", case("InfraJobOverDeadline", [
        series("infra_oldest_in_flight_seconds", "3000x10")], "6m", None)),
    ("failure ratio by kind fires", case("InfraFailureRatioHigh", [
        series("infra_results_total", "0+1x60", status="unreachable", kind="ssh_unreachable"),
        series("infra_results_total", "0x60", status="failed", kind="play_failed"),
        series("infra_results_total", "0+1x60", status="succeeded", kind="none")], "60m",
        [{**WARN, "kind": "ssh_unreachable"}])),
    ("mostly successes quiet", case("InfraFailureRatioHigh", [
        series("infra_results_total", "0+0x60", status="failed", kind="play_failed"),
        series("infra_results_total", "0+1x60", status="succeeded", kind="none")], "60m",
        None)),
    ("too few results quiet", case("InfraFailureRatioHigh", [
        series("infra_results_total", "0x30 1x30", status="failed", kind="play_failed"),
        series("infra_results_total", "0x30 1x30", status="succeeded", kind="none")], "60m",
        None)),
    ("job failure ratio fires", case("InfraJobFailureRatioHigh", [
        series("infra_jobs_failed_total", "0+1x60", reason="Error"),
        series("infra_jobs_failed_total", "0x60", reason="OOMKilled"),
        series("infra_jobs_succeeded_total", "0+1x60")], "60m",
        [{**WARN, "reason": "Error"}])),
    ("jobs succeeding quiet", case("InfraJobFailureRatioHigh", [
        series("infra_jobs_failed_total", "0x60", reason="Error"),
        series("infra_jobs_succeeded_total", "0+1x60")], "60m", None)),
    ("unreachable spike fires", case("InfraUnreachableSpike", [
        series("infra_results_total", "0+1x20", status="unreachable", kind="ssh_unreachable")],
        "20m", [WARN])),
    ("few unreachable quiet", case("InfraUnreachableSpike", [
        series("infra_results_total", "0x10 1x10", status="unreachable",
               kind="ssh_unreachable")], "20m", None)),
]


def _without_annotations(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = copy.deepcopy(groups)
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return groups


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = {r["alert"] for g in rule_groups() for r in g["rules"]}
    assert names == set(ALERTS)
    tested: dict[str, set[bool]] = {c["alert_rule_test"][0]["alertname"]: set() for _, c in CASES}
    for _, c in CASES:
        test = c["alert_rule_test"][0]
        tested[test["alertname"]].add(bool(test["exp_alerts"]))
    assert tested == {a: {True, False} for a in ALERTS}


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout + out.stderr


@pytest.mark.parametrize(("name", "test"), CASES, ids=[n for n, _ in CASES])
def test_alert_unit(name: str, test: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(
        {"groups": _without_annotations(rule_groups())}))
    spec = tmp_path / "test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                    "tests": [test]}))
    out = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, f"{name}:\n{out.stdout}{out.stderr}"


def test_thresholds_are_values() -> None:
    (group,) = rule_groups({"backlogDepth": 7, "unreachableThreshold": 2,
                            "selector": 'job="custom"'})
    exprs = {r["alert"]: r["expr"] for r in group["rules"]}
    assert exprs["InfraQueueBacklog"].endswith("> 7")
    assert 'status="unreachable"' in exprs["InfraUnreachableSpike"]
    assert exprs["InfraUnreachableSpike"].rstrip().endswith("> 2")
    assert all('job="custom"' in e for e in exprs.values())


def dashboard() -> dict[str, Any]:
    rendered = render({"grafanaDashboard": {"enabled": True}})
    config_map = rendered.one("ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(config_map["data"]["infra-service.json"])


def dashboard_queries(selector: str = f'namespace="{NAMESPACE}", job="{SEL["job"]}"',
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
    # promtool parses every query as a recording rule expression.
    rules = tmp_path / "dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q} for i, q in enumerate(queries)]}]}))
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
