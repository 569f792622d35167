"""The chart's hooks, offline: `helm uninstall` never deletes hook resources, so every hook
deletes itself once it passed (all but a createSecret Secret, documented to stay); the
`helm test` pods run where the pods of their image may run. tests/kube/test_chart_lifecycle.py
proves both with the real helm and a tainted node."""

from __future__ import annotations

from typing import Any

from tests.support.chart import render

TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}


def hooks(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["annotations"]
            for o in objects if "helm.sh/hook" in (o["metadata"].get("annotations") or {})}


def test_every_hook_is_deleted_once_it_passed() -> None:
    rendered = render({"networkPolicy": {"enabled": True}})
    found = hooks(rendered.objects)
    assert set(found) == {"Job/prov-infra-service-migrate",
                          "NetworkPolicy/prov-infra-service-migrate",
                          "NetworkPolicy/prov-infra-service-test-dispatcher",
                          "NetworkPolicy/prov-infra-service-test-redis",
                          "NetworkPolicy/prov-infra-service-test-postgres",
                          "Pod/prov-infra-service-test-dispatcher",
                          "Pod/prov-infra-service-test-redis",
                          "Pod/prov-infra-service-test-postgres"}, sorted(found)
    for name, marks in found.items():
        policies = marks["helm.sh/hook-delete-policy"].split(",")
        assert {"before-hook-creation", "hook-succeeded"} <= set(policies), (name, policies)
        if name.startswith("Pod/"):
            # helm prints a test pod's output before deleting it (`--logs` cannot: it is gone)
            assert marks["helm.sh/hook-output-log-policy"] == \
                "hook-succeeded,hook-failed", name


def test_test_pods_follow_the_placement_of_their_image() -> None:
    rendered = render({
        "dispatcher": {"nodeSelector": {"pool": "control"}, "tolerations": [TOLERATION],
                       "imagePullSecrets": ["dispatcher-pull"]},
        "runner": {"nodeSelector": {"pool": "runners"}, "imagePullSecrets": ["runner-pull"]},
    })
    placement = {pod["metadata"]["name"]: (pod["spec"].get("nodeSelector"),
                                           pod["spec"].get("tolerations"),
                                           pod["spec"].get("imagePullSecrets"))
                 for pod in rendered.of_kind("Pod")}
    control = ({"pool": "control"}, [TOLERATION], [{"name": "dispatcher-pull"}])
    assert placement == {
        "prov-infra-service-test-dispatcher": control,
        "prov-infra-service-test-redis": control,
        "prov-infra-service-test-postgres": ({"pool": "runners"}, None,
                                             [{"name": "runner-pull"}]),
    }
    plain = {p["metadata"]["name"]: sorted(set(p["spec"]) & {"nodeSelector", "tolerations",
                                                               "imagePullSecrets"})
             for p in render().of_kind("Pod")}
    assert all(keys == [] for keys in plain.values()), plain
