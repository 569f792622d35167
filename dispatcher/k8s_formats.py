"""Kubernetes value formats the settings can check offline, with the API server's rules.

The dry-run preflight (service.py) is the authority; these checks make the common mistakes
fail when the settings load, naming the variable, instead of at the first create.
"""

from __future__ import annotations

import re
from typing import Any

QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIXES = {"", "n", "u", "m", "k", "M", "G", "T", "P", "E",
             "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
_EXPONENT = re.compile(r"^[eE][-+]?[0-9]+$")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
TOLERATION_OPERATORS = ("Equal", "Exists")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
RESOURCE_SECTIONS = ("limits", "requests", "claims")


def quantity_problem(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if not isinstance(value, str):
        return f"{value!r} is not a quantity (a string such as \"512Mi\" or \"100m\")"
    match = _QUANTITY.match(value)
    if not match or value.count(".") > 1 or (
            match.group(2) not in _SUFFIXES and not _EXPONENT.match(match.group(2))):
        return (f"{value!r} is not a Kubernetes quantity (e.g. \"512Mi\", \"1Gi\", \"100m\"; "
                "no spaces, binary suffixes Ki/Mi/Gi, decimal k/M/G)")
    return None


def dns_subdomain_problem(value: str) -> str | None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return (f"{value!r} is not a DNS-1123 subdomain (lower case alphanumerics, '-' and "
                "'.', at most 253 characters)")
    return None


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and dns_subdomain_problem(prefix):
        return (f"label key {key!r}: the prefix before '/' must be a DNS subdomain: "
                f"{dns_subdomain_problem(prefix)}")
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        return (f"label key {key!r} is not a qualified name: the name part (after an "
                "optional 'prefix/') must be 1-63 alphanumerics, '-', '_' or '.', starting "
                "and ending alphanumeric (no spaces)")
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return (f"label value {value!r} must be at most 63 alphanumerics, '-', '_' or '.', "
                "starting and ending alphanumeric (no spaces)")
    return None


ANNOTATIONS_TOTAL_LIMIT = 256 * 1024  # bytes of all keys and values (the API server's rule)


def annotation_key_problem(key: str) -> str | None:
    """The API server checks annotation keys as qualified names after lower-casing them
    (so, unlike a label key, an upper-case prefix passes)."""
    problem = label_key_problem(key.lower())
    if problem:
        return problem.replace(f"label key {key.lower()!r}", f"annotation key {key!r}", 1)
    return None


def annotations_problems(annotations: dict[str, str]) -> list[str]:
    problems = [p for p in map(annotation_key_problem, annotations) if p]
    total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if total > ANNOTATIONS_TOTAL_LIMIT:
        problems.append(f"annotations take {total} bytes (keys and values); Kubernetes allows "
                        f"at most {ANNOTATIONS_TOTAL_LIMIT} (256 KiB) in all")
    return problems


def labels_problems(labels: dict[str, str]) -> list[str]:
    problems = []
    for key, value in labels.items():
        problems += [p for p in (label_key_problem(key), label_value_problem(value)) if p]
    return problems


def resources_problems(resources: dict[str, Any]) -> list[str]:
    problems = []
    for section, values in resources.items():
        if section not in RESOURCE_SECTIONS:
            problems.append(f"unknown section {section!r} (use {', '.join(RESOURCE_SECTIONS)})")
        elif section != "claims":
            if not isinstance(values, dict):
                problems.append(f"{section} must be an object of quantities")
                continue
            for name, quantity in values.items():
                problem = quantity_problem(quantity)
                if problem:
                    problems.append(f"{section}.{name}: {problem}")
    return problems


def toleration_problems(t: dict[str, Any]) -> list[str]:
    problems = []
    operator = t.get("operator") or "Equal"
    if operator not in TOLERATION_OPERATORS:
        problems.append(f"operator {operator!r} is not one of {', '.join(TOLERATION_OPERATORS)}")
    if operator == "Exists" and t.get("value"):
        problems.append("value must be empty when operator is Exists")
    if not t.get("key") and operator != "Exists":
        problems.append("operator must be Exists when key is empty")
    if t.get("key") and label_key_problem(t["key"]):
        problems.append(str(label_key_problem(t["key"])))
    if operator == "Equal" and t.get("value") and label_value_problem(str(t["value"])):
        problems.append(str(label_value_problem(str(t["value"]))))
    effect = t.get("effect")
    if effect and effect not in TOLERATION_EFFECTS:
        problems.append(f"effect {effect!r} is not one of {', '.join(TOLERATION_EFFECTS)}")
    if t.get("tolerationSeconds") is not None and effect != "NoExecute":
        problems.append("tolerationSeconds needs effect NoExecute")
    return problems
