"""What the chart's NetworkPolicies let through, computed from the rendered policies as an
enforcing CNI would: each `helm test` pod may reach exactly what it checks (DNS and the one
Service its check uses, on that Service's port), the dispatcher's metrics port admits the
configured monitoring namespace and the dispatcher check, nothing else.

Rendering only; tests/kube/test_chart_drain.py and test_chart_lifecycle.py install the chart
with the real helm."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dispatcher.naming import job_name
from tests.support.chart import CHART_DIR, FULL_VALUES, NAMESPACE, Rendered, job_from_chart, render

Obj = dict[str, Any]
NS_NAME = "kubernetes.io/metadata.name"
DNS = {(53, "UDP"), (53, "TCP")}
DISPATCHER_POLICY = "infra-service-dispatcher"  # not "-test-dispatcher"
DEFAULTS: Obj = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

pytestmark = pytest.mark.unit


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A LabelSelector as the API server evaluates it; {} selects everything."""
    if selector is None:
        return False
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], \
            expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str = NAMESPACE
    namespace_labels: tuple[tuple[str, str], ...] = ()

    @property
    def ns_labels(self) -> dict[str, str]:
        return {NS_NAME: self.namespace, **dict(self.namespace_labels)}


def peer_admits(peer: Obj, pod: Pod, policy_namespace: str) -> bool:
    """A NetworkPolicyPeer: an ipBlock is not a pod of the cluster; a podSelector alone means
    the policy's own namespace."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.ns_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def selecting(rendered: Rendered, pod: Pod, direction: str) -> list[Obj]:
    return [p for p in rendered.of_kind("NetworkPolicy")
            if p["metadata"]["namespace"] == pod.namespace
            and direction in p["spec"]["policyTypes"]
            and selects(p["spec"]["podSelector"], pod.labels)]


def container_port(pod_spec: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports", [])
             if p.get("name") == port]
    assert len(found) == 1, f"port {port!r}: {found}"
    return int(found[0])


def workloads(rendered: Rendered) -> list[tuple[dict[str, str], Obj]]:
    """(pod labels, pod spec) of every pod the release runs or creates."""
    found = [(d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
             for d in rendered.of_kind("Deployment")]
    return found + [(p["metadata"]["labels"], p["spec"]) for p in rendered.of_kind("Pod")]


def peer_key(peer: Obj) -> str:
    return "peer " + json.dumps(peer, sort_keys=True)


def egress_of(rendered: Rendered, pod: Pod, values: Obj) -> set[tuple[int, str, str]]:
    """(port, protocol, destination) the pod may open: destination "any", "dns", the
    component label of the release's pods the peer selects, or the peer itself when it
    selects none of them (a Redis elsewhere, an ipBlock). Named ports resolve on the pods
    the peer selects."""
    policies = selecting(rendered, pod, "Egress")
    assert policies, f"no policy selects {pod.labels}: it may reach anything"
    reachable: set[tuple[int, str, str]] = set()
    dns_peers = network_values(values)["dnsTo"]
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to")
            for port in rule.get("ports") or []:
                protocol = port.get("protocol", "TCP")
                if not peers:
                    assert isinstance(port["port"], int), rule
                    reachable.add((port["port"], protocol, "any"))
                    continue
                for peer in peers:
                    if peer in dns_peers:
                        reachable.add((port["port"], protocol, "dns"))
                        continue
                    targets = [(labels, spec) for labels, spec in workloads(rendered)
                               if peer_admits(peer, Pod(labels), policy["metadata"]
                                              ["namespace"])]
                    if not targets:
                        assert isinstance(port["port"], int), rule
                        reachable.add((port["port"], protocol, peer_key(peer)))
                    for labels, spec in targets:
                        reachable.add((container_port(spec, port["port"]), protocol,
                                       labels["app.kubernetes.io/component"]))
    return reachable


def network_values(values: Obj) -> Obj:
    """networkPolicy of ``values`` over the chart's defaults (helm merges maps, lists
    replace)."""
    merged: Obj = {**DEFAULTS["networkPolicy"], **values.get("networkPolicy", {})}
    merged["destinations"] = {**DEFAULTS["networkPolicy"]["destinations"],
                              **merged.get("destinations", {})}
    return merged


def env(pod: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]
            if "value" in e}


def uses(rendered: Rendered, pod: Obj, values: Obj) -> set[tuple[int, str, str]]:
    """What the check in ``pod`` connects to, read from its own configuration: the metrics
    Service named in METRICS_URL (its targetPort on the pods it selects), REDIS_URL or
    DATABASE_URL (at the configured destinations, or anywhere when none is)."""
    variables = env(pod)
    if "METRICS_URL" in variables:
        url = urlsplit(variables["METRICS_URL"])
        service_name, namespace = str(url.hostname).split(".")[:2]
        assert namespace == pod["metadata"]["namespace"]
        service = rendered.one("Service", service_name)
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
        targets = [(labels, spec) for labels, spec in workloads(rendered)
                   if selects({"matchLabels": service["spec"]["selector"]}, labels)]
        assert targets, f"Service {service_name} selects no pod"
        return {(container_port(spec, port["targetPort"]), port["protocol"],
                 labels["app.kubernetes.io/component"]) for labels, spec in targets}
    url = urlsplit(variables.get("REDIS_URL") or variables["DATABASE_URL"])
    redis = url.scheme.startswith("redis")
    port = url.port or (6379 if redis else 5432)
    peers = network_values(values)["destinations"]["redis" if redis else "postgres"]
    return {(port, "TCP", peer_key(p)) for p in peers} or {(port, "TCP", "any")}


CASES = {
    "defaults": {"networkPolicy": {"enabled": True}},
    "full values": FULL_VALUES,
    "other ports": {"networkPolicy": {"enabled": True},
                    "redis": {"url": "redis://cache.data.svc:7001/0"},
                    "database": {"url": "postgresql://infra@db.data.svc/infra"},
                    "dispatcher": {"metricsPort": 9200, "healthPort": 8181},
                    "service": {"port": 80}},
    "destinations": {"networkPolicy": {"enabled": True, "destinations": {
        "redis": [{"namespaceSelector": {"matchLabels": {NS_NAME: "data"}},
                   "podSelector": {"matchLabels": {"app": "redis"}}}],
        "postgres": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}}},
}


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_each_helm_test_pod_reaches_what_it_checks_and_nothing_more(values: Obj) -> None:
    rendered = render(values)
    checks = rendered.of_kind("Pod")
    assert len(checks) == 3
    for check in checks:
        pod = Pod(check["metadata"]["labels"])
        name = check["metadata"]["name"]
        reachable = egress_of(rendered, pod, values)
        assert {(port, proto) for port, proto, to in reachable if to == "dns"} == DNS, name
        assert {r for r in reachable if r[2] != "dns"} == uses(rendered, check, values), name
        # nothing may connect to a test pod
        for policy in selecting(rendered, pod, "Ingress"):
            assert policy["spec"]["ingress"] == [], (name, policy["metadata"]["name"])
        assert selecting(rendered, pod, "Ingress"), f"{name} accepts any connection"


def scrapers(rendered: Rendered, pod: Pod) -> bool:
    """Whether ``pod`` may open the dispatcher's metrics port."""
    policy = rendered.one("NetworkPolicy", DISPATCHER_POLICY)
    return any(any(p.get("port") == "metrics" for p in rule["ports"])
               and any(peer_admits(peer, pod, NAMESPACE) for peer in rule["from"])
               for rule in policy["spec"]["ingress"])


PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")
NEIGHBOUR = Pod({"app": "anything"})  # any other pod of the release's namespace
OBSERVABILITY = Pod({"app.kubernetes.io/name": "prometheus"}, "observability",
                    (("team", "sre"),))


def test_metrics_are_open_to_the_monitoring_namespace_by_default() -> None:
    rendered = render({"networkPolicy": {"enabled": True}})
    assert scrapers(rendered, PROMETHEUS)
    assert not scrapers(rendered, NEIGHBOUR)
    assert not scrapers(rendered, OBSERVABILITY)
    checks = {p["metadata"]["labels"]["infra-service.io/helm-test"]: Pod(p["metadata"]["labels"])
              for p in rendered.of_kind("Pod")}
    assert scrapers(rendered, checks["dispatcher"])
    assert not scrapers(rendered, checks["redis"]) and not scrapers(rendered, checks["postgres"])


def test_metrics_scrapers_are_configurable() -> None:
    elsewhere = render({"networkPolicy": {
        "enabled": True, "metricsNamespaces": ["observability"],
        "metricsPodSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}})
    assert scrapers(elsewhere, OBSERVABILITY)
    assert not scrapers(elsewhere, PROMETHEUS)  # the list replaced the default
    assert not scrapers(elsewhere, Pod({"app": "grafana"}, "observability"))
    by_label = render({"networkPolicy": {"enabled": True, "metricsNamespaces": [],
                                         "metricsFrom": [{"namespaceSelector": {
                                             "matchLabels": {"team": "sre"}}}]}})
    assert scrapers(by_label, OBSERVABILITY) and not scrapers(by_label, PROMETHEUS)
    own = render({"networkPolicy": {"enabled": True, "metricsNamespaces": [],
                                    "metricsFrom": [{"podSelector": {}}]}})
    assert scrapers(own, NEIGHBOUR) and not scrapers(own, PROMETHEUS)


def test_no_scraper_at_all_admits_nothing() -> None:
    """An ingress rule with an empty `from` would admit every source."""
    rendered = render({"networkPolicy": {"enabled": True, "metricsNamespaces": []},
                       "helmTests": {"enabled": False}})
    assert rendered.one("NetworkPolicy", DISPATCHER_POLICY)["spec"]["ingress"] == []


def test_service_monitor_takes_the_usual_options() -> None:
    relabel = [{"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                "targetLabel": "node"}]
    drop = [{"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}]
    rendered = render({"serviceMonitor": {
        "enabled": True, "interval": "15s", "scrapeTimeout": "5s",
        "labels": {"release": "prometheus"}, "relabelings": relabel,
        "metricRelabelings": drop, "honorLabels": True}})
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s",
                        "scrapeTimeout": "5s", "honorLabels": True, "relabelings": relabel,
                        "metricRelabelings": drop}
    plain = render({"serviceMonitor": {"enabled": True}}).one("ServiceMonitor")
    assert set(plain["spec"]["endpoints"][0]) == {"port", "path", "interval", "scrapeTimeout",
                                                  "honorLabels"}


def test_the_schema_refuses_an_unknown_relabel_action() -> None:
    with pytest.raises(Exception, match="relabelings"):
        render({"serviceMonitor": {"enabled": True,
                                   "relabelings": [{"action": "rename", "targetLabel": "x"}]}})


def dashboard_of(release: str, namespace: str) -> tuple[str, str, str]:
    config_map = render({"grafanaDashboard": {"enabled": True}}, name=release,
                        namespace=namespace).one("ConfigMap", "-dashboard")
    ((key, text),) = config_map["data"].items()
    board = json.loads(text)
    return key, board["uid"], board["title"]


def test_each_release_has_a_dashboard_of_its_own() -> None:
    """Grafana keys dashboards by uid and its sidecar writes each ConfigMap key to one folder:
    two releases (same name in two namespaces, or two names) must differ in both."""
    boards = [dashboard_of("prov", "platform"), dashboard_of("prov", "staging"),
              dashboard_of("prov-b", "platform")]
    for field in range(3):
        assert len({b[field] for b in boards}) == 3, boards
    assert all(len(uid) <= 40 for _, uid, _ in boards), boards  # Grafana's limit
    assert "platform/prov" in boards[0][2]
    # an upgrade keeps the uid, so Grafana keeps the dashboard's links and history
    assert dashboard_of("prov", "platform") == boards[0]



def readme_route() -> dict[str, str]:
    """The Alertmanager route of the chart README's KubeJobFailed section: {label: (op, value)}."""
    text = (CHART_DIR / "README.md").read_text()
    section = text[text.index("## Failed runner Jobs and KubeJobFailed"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    config = yaml.safe_load(block[:block.index("```")])
    (route,) = config["route"]["routes"]
    matchers = {}
    for matcher in route["matchers"]:
        found = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher)
        assert found, matcher
        matchers[found[1]] = f"{found[2]}{found[3]}"
    return matchers


HANDLES = ["web-7", "WEB_7.example", "a", "x" * 63, "db-0123456789ab", "9-9"]


def test_the_readme_route_takes_runner_jobs_out_of_kube_job_failed_and_only_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    matchers = readme_route()
    assert matchers["alertname"] == "=KubeJobFailed"
    assert matchers["namespace"].startswith("=")
    pattern = matchers["job_name"].removeprefix("=~")
    assert pattern != matchers["job_name"], "job_name must be a regex matcher"
    runner_jobs = [job_name(h, f"req-{i}") for i, h in enumerate(HANDLES)]
    runner_jobs.append(job_from_chart(render(), monkeypatch)["metadata"]["name"])
    for name in runner_jobs:
        assert re.fullmatch(pattern, name), name  # Alertmanager anchors regex matchers
    # the Jobs the chart itself makes (the migration hook) keep KubeJobFailed, whatever the
    # release is called
    for release in ("prov", "prov-a1b2c3d4e5f6", "p"):
        for job in render({}, name=release).of_kind("Job"):
            assert not re.fullmatch(pattern, job["metadata"]["name"]), job["metadata"]["name"]
