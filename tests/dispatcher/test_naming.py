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
def test_names_are_valid_dns_labels(handle: str) -> None:
    name = job_name(handle, "request-1")
    assert len(name) <= 63
    assert DNS1123_LABEL.match(name), name


def test_same_request_same_name_other_request_other_name() -> None:
    assert job_name("srv-1", "r1") == job_name("srv-1", "r1")
    assert job_name("srv-1", "r1") != job_name("srv-1", "r2")
    # Handles that slug alike still get distinct names through the request id.
    assert job_name("SRV_1", "r1") != job_name("srv-1", "r2")


def test_name_shows_the_handle_for_humans() -> None:
    assert job_name("web-7", "abc").startswith("prov-web-7-")
