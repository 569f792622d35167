"""Job names: deterministic per request, always valid DNS-1123 labels of <= 63 chars."""

from __future__ import annotations

import re

import pytest

from dispatcher.naming import job_name

pytestmark = pytest.mark.unit

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("handle", [
    "srv-1", "SRV_01", "a", "x" * 63, "web.eu-1.example", "Z9", "a-" * 31 + "b", "___a___"[3:4],
    "0.0.0", "A_B.C-D",
])
@pytest.mark.parametrize("plan", [False, True])
def test_names_are_valid_dns_labels(handle: str, plan: bool) -> None:
    name = job_name(handle, "request-1", plan=plan)
    assert len(name) <= 58
    assert DNS1123_LABEL.match(name), name


def test_same_request_same_name_other_request_other_name() -> None:
    assert job_name("srv-1", "r1") == job_name("srv-1", "r1")
    assert job_name("srv-1", "r1") != job_name("srv-1", "r2")
    # Handles that slug alike still get distinct names through the request id.
    assert job_name("SRV_1", "r1") != job_name("srv-1", "r2")


def test_name_shows_the_handle_for_humans() -> None:
    assert job_name("web-7", "abc").startswith("prov-web-7-")


def test_a_plan_says_so_in_its_name_and_still_matches_the_alert_route() -> None:
    """`kubectl get jobs` shows the name; the chart README routes KubeJobFailed for
    runner Jobs by `prov-[a-z0-9-]+-[0-9a-f]{12}`."""
    name = job_name("web-7", "abc", plan=True)
    assert name.startswith("prov-plan-web-7-")
    assert re.fullmatch(r"prov-[a-z0-9-]+-[0-9a-f]{12}", name)
    assert name != job_name("web-7", "abc")
