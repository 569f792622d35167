"""Object-metadata validation with the API server's rules and message texts.

Covers names (DNS-1123 subdomain / label), generateName, label keys and values, annotation
keys and total size, and the ownerReferences shape. Spec rules per kind live in `kinds.py`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .status import FieldError, invalid_value, required, too_long

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
QUALIFIED_NAME_MAX = 63
ANNOTATIONS_MAX_BYTES = 256 * 1024

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + ")*"
_QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _QUALIFIED_NAME + ")?"
_ENV_VAR_NAME = "[-._a-zA-Z][-._a-zA-Z0-9]*"
_CONFIG_KEY = "[-._a-zA-Z0-9]+"

_dns_label_re = re.compile(f"^{_DNS1123_LABEL}$")
_dns_subdomain_re = re.compile(f"^{_DNS1123_SUBDOMAIN}$")
_qualified_name_re = re.compile(f"^{_QUALIFIED_NAME}$")
_label_value_re = re.compile(f"^{_LABEL_VALUE}$")
_env_var_re = re.compile(f"^{_ENV_VAR_NAME}$")
_config_key_re = re.compile(f"^{_CONFIG_KEY}$")

DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{_DNS1123_SUBDOMAIN}')"
)
DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    f"used for validation is '{_DNS1123_LABEL}')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
    f"for validation is '{_QUALIFIED_NAME}')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE}')"
)
ENV_VAR_MSG = (
    "a valid environment variable name must consist of alphabetic characters, digits, '_', "
    "'-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or "
    f"'MyEnvName1', regex used for validation is '{_ENV_VAR_NAME}')"
)
CONFIG_KEY_MSG = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    f"'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '{_CONFIG_KEY}')"
)


def max_len_msg(limit: int) -> str:
    return f"must be no more than {limit} characters"


@lru_cache(maxsize=8192)
def dns1123_subdomain(value: str) -> tuple[str, ...]:
    problems = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(max_len_msg(DNS1123_SUBDOMAIN_MAX))
    if not _dns_subdomain_re.match(value):
        problems.append(DNS1123_SUBDOMAIN_MSG)
    return tuple(problems)


@lru_cache(maxsize=8192)
def dns1123_label(value: str) -> tuple[str, ...]:
    problems = []
    if len(value) > DNS1123_LABEL_MAX:
        problems.append(max_len_msg(DNS1123_LABEL_MAX))
    if not _dns_label_re.match(value):
        problems.append(DNS1123_LABEL_MSG)
    return tuple(problems)


@lru_cache(maxsize=8192)
def qualified_name(value: str) -> tuple[str, ...]:
    """A label or annotation key: optional DNS-subdomain prefix, '/', then a name part."""
    parts = value.split("/")
    if len(parts) == 1:
        prefix, name = "", parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ("prefix part must be non-empty",)
    else:
        return (
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  "
            "or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?"
            "[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. "
            "'example.com/MyName')",
        )
    problems = [f"prefix part {p}" for p in dns1123_subdomain(prefix)] if prefix else []
    if not name:
        problems.append("name part must be non-empty")
    else:
        if len(name) > QUALIFIED_NAME_MAX:
            problems.append("name part " + max_len_msg(QUALIFIED_NAME_MAX))
        if not _qualified_name_re.match(name):
            problems.append(QUALIFIED_NAME_MSG)
    return tuple(problems)


@lru_cache(maxsize=8192)
def label_value(value: str) -> tuple[str, ...]:
    problems = []
    if len(value) > LABEL_VALUE_MAX:
        problems.append(max_len_msg(LABEL_VALUE_MAX))
    if not _label_value_re.match(value):
        problems.append(LABEL_VALUE_MSG)
    return tuple(problems)


@lru_cache(maxsize=8192)
def env_var_name(value: str) -> tuple[str, ...]:
    return () if _env_var_re.match(value) else (ENV_VAR_MSG,)


@lru_cache(maxsize=8192)
def config_key(value: str) -> tuple[str, ...]:
    problems = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(max_len_msg(DNS1123_SUBDOMAIN_MAX))
    if not _config_key_re.match(value):
        problems.append(CONFIG_KEY_MSG)
    return tuple(problems)


def each(path: str, value: Any, problems: tuple[str, ...]) -> list[FieldError]:
    if not problems:
        return []
    return [invalid_value(path, value, p) for p in problems]


def labels(path: str, value: Any) -> list[FieldError]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [invalid_value(path, value, "must be a map of string keys to string values")]
    errors: list[FieldError] = []
    for key, val in value.items():
        errors += each(path, key, qualified_name(key))
        if not isinstance(val, str):
            errors.append(invalid_value(path, val, "label values must be strings"))
        else:
            errors += each(path, val, label_value(val))
    return errors


def annotations(path: str, value: Any) -> list[FieldError]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [invalid_value(path, value, "must be a map of string keys to string values")]
    errors: list[FieldError] = []
    total = 0
    for key, val in value.items():
        errors += each(path, key, qualified_name(key.lower()))
        total += len(key) + len(val if isinstance(val, str) else str(val))
    if total > ANNOTATIONS_MAX_BYTES:
        errors.append(too_long(path, ANNOTATIONS_MAX_BYTES))
    return errors


def object_meta(meta: dict[str, Any], name_rule: str = "subdomain") -> list[FieldError]:
    """Checks `metadata` of an object being created or updated (name already generated)."""
    errors: list[FieldError] = []
    name = meta.get("name")
    if not name:
        errors.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        errors.append(invalid_value("metadata.name", name, "must be a string"))
    else:
        rule = dns1123_label if name_rule == "label" else dns1123_subdomain
        errors += each("metadata.name", name, rule(name))
    generate = meta.get("generateName")
    if generate and isinstance(generate, str) and not name:
        errors += each("metadata.generateName", generate, dns1123_subdomain(generate + "a"))
    errors += labels("metadata.labels", meta.get("labels"))
    errors += annotations("metadata.annotations", meta.get("annotations"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        path = f"metadata.ownerReferences[{i}]"
        for key in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref, dict) or not ref.get(key):
                errors.append(required(f"{path}.{key}", f"{key} must not be empty"))
    controllers = [r for r in meta.get("ownerReferences") or []
                   if isinstance(r, dict) and r.get("controller")]
    if len(controllers) > 1:
        errors.append(invalid_value("metadata.ownerReferences", "",
                                    "Only one reference can have Controller set to true"))
    return errors
