"""The API server's value formats as the settings check them offline (k8s_formats.py), with
generated values: what Kubernetes accepts passes, what it refuses is refused with a message
quoting the value. The real API server's own verdicts on the same keys:
tests/kube/test_job_metadata.py."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher import k8s_formats as fmt

pytestmark = pytest.mark.unit

ALNUM = string.ascii_letters + string.digits
SUFFIXES = ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]


def name_parts(max_size: int) -> st.SearchStrategy[str]:
    """Qualified-name parts: alphanumeric at both ends, '-', '_' or '.' inside."""
    inner = st.text(alphabet=ALNUM + "-_.", max_size=max(max_size - 2, 0))
    return st.builds(lambda a, mid, b: (a + mid + b)[:max_size],
                     st.sampled_from(ALNUM), inner, st.sampled_from(ALNUM))


def dns_labels() -> st.SearchStrategy[str]:
    lower = string.ascii_lowercase + string.digits
    return st.builds(lambda a, mid, b: a + mid + b, st.sampled_from(lower),
                     st.text(alphabet=lower + "-", max_size=20), st.sampled_from(lower))


@given(st.integers(min_value=0, max_value=10**9), st.one_of(st.none(), st.integers(0, 999)),
       st.sampled_from(SUFFIXES))
def test_every_quantity_kubernetes_writes_passes(whole: int, fraction: int | None,
                                                  suffix: str) -> None:
    value = f"{whole}{'' if fraction is None else f'.{fraction}'}{suffix}"
    assert fmt.quantity_problem(value) is None, value


@given(st.sampled_from(["512Mi", "1Gi", "100m", "2"]), st.integers(0, 3),
       st.sampled_from([" ", "\t", "x", "Mb", "GB", "ki", "_"]))
def test_a_quantity_with_a_foreign_character_is_refused_and_quoted(
        valid: str, at: int, foreign: str) -> None:
    value = valid[:at] + foreign + valid[at:]
    problem = fmt.quantity_problem(value)
    assert problem is not None and repr(value) in problem, value


@given(name_parts(63), st.one_of(st.none(), st.lists(dns_labels(), min_size=1, max_size=3)))
def test_qualified_names_pass_as_label_and_annotation_keys(
        name: str, prefix: list[str] | None) -> None:
    key = f"{'.'.join(prefix)}/{name}" if prefix else name
    assert fmt.label_key_problem(key) is None, key
    assert fmt.annotation_key_problem(key) is None, key


@given(name_parts(63), st.sampled_from([" ", "/", "@", "é"]))
def test_a_key_with_a_character_outside_the_rule_is_refused_naming_the_key(
        name: str, bad: str) -> None:
    key = f"{name[:1]}{bad}{name[1:]}x" if bad != "/" else f"Bad_Prefix/{name}"
    problem = fmt.label_key_problem(key)
    assert problem is not None and repr(key) in problem, key


def test_a_name_part_is_at_most_63_characters() -> None:
    assert fmt.label_key_problem("a" * 63) is None
    assert fmt.label_key_problem("a" * 64) is not None
    assert fmt.label_value_problem("v" * 63) is None
    assert fmt.label_value_problem("v" * 64) is not None


def test_annotation_keys_are_checked_lower_cased_as_the_api_server_does() -> None:
    assert fmt.label_key_problem("Example.COM/key") is not None
    assert fmt.annotation_key_problem("Example.COM/key") is None
    problem = fmt.annotation_key_problem("bad key")
    assert problem is not None and problem.startswith("annotation key 'bad key'")


def test_annotations_are_limited_to_256_kib_in_all() -> None:
    assert fmt.annotations_problems({"a": "x" * (256 * 1024 - 1)}) == []
    [problem] = fmt.annotations_problems({"a": "x" * (256 * 1024)})
    assert "256 KiB" in problem


@pytest.mark.parametrize(("toleration", "says"), [
    ({"key": "k", "operator": "Exists", "value": "v"}, "value must be empty"),
    ({"operator": "Equal", "value": "v"}, "operator must be Exists"),
    ({"key": "k", "operator": "In"}, "operator 'In'"),
    ({"key": "k", "effect": "NoRun"}, "effect 'NoRun'"),
    ({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}, "NoExecute"),
])
def test_tolerations_the_api_server_refuses(toleration: dict[str, object], says: str) -> None:
    problems = fmt.toleration_problems(toleration)
    assert any(says in p for p in problems), problems


def test_resources_name_the_section_and_the_quantity() -> None:
    assert fmt.resources_problems({"limits": {"memory": "1Gi"}, "requests": {"cpu": 0.1}}) == []
    problems = fmt.resources_problems({"limits": {"memory": "1 GB"}, "limit": {}})
    assert any(p.startswith("limits.memory: '1 GB'") for p in problems), problems
    assert any("unknown section 'limit'" in p for p in problems), problems
