"""Job spec.podFailurePolicy: validation as the API server does it, and the Job controller's
matching of a failed pod against the rules (only what decides FailJob / Ignore / Count)."""

from __future__ import annotations

from typing import Any

from .status import FieldError, duplicate, invalid_value, not_supported, required

MAX_RULES = 20
MAX_EXIT_CODES = 255
ACTIONS = ["Count", "FailIndex", "FailJob", "Ignore"]
OPERATORS = ["In", "NotIn"]
CONDITION_STATUSES = ["False", "True", "Unknown"]


def _too_many(path: str, count: int, limit: int) -> FieldError:
    return invalid_value(path, count, f"must have at most {limit} items")


def validate(spec: dict[str, Any]) -> list[FieldError]:
    policy = spec.get("podFailurePolicy")
    if policy is None:
        return []
    path = "spec.podFailurePolicy"
    errors: list[FieldError] = []
    if not isinstance(policy, dict):
        return [invalid_value(path, policy, "must be an object")]
    template_spec = (spec.get("template") or {}).get("spec") or {}
    restart = template_spec.get("restartPolicy")
    if restart != "Never":
        errors.append(invalid_value("spec.template.spec.restartPolicy", restart,
                                    'only "Never" is supported when podFailurePolicy is '
                                    "specified"))
    names = {c.get("name") for key in ("containers", "initContainers")
             for c in template_spec.get(key) or [] if isinstance(c, dict)}
    rules = policy.get("rules")
    if not isinstance(rules, list):
        return [*errors, required(f"{path}.rules")]
    if len(rules) > MAX_RULES:
        errors.append(_too_many(f"{path}.rules", len(rules), MAX_RULES))
    for i, rule in enumerate(rules):
        errors += _validate_rule(f"{path}.rules[{i}]", rule, names, spec)
    return errors


def _validate_rule(path: str, rule: Any, names: set[Any],
                   spec: dict[str, Any]) -> list[FieldError]:
    if not isinstance(rule, dict):
        return [invalid_value(path, rule, "must be an object")]
    errors: list[FieldError] = []
    action = rule.get("action")
    if action is None:
        errors.append(required(f"{path}.action"))
    elif action not in ACTIONS:
        errors.append(not_supported(f"{path}.action", action, ACTIONS))
    elif action == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
        errors.append(invalid_value(f"{path}.action", action,
                                    "requires the backoffLimitPerIndex to be set"))
    codes, conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
    if codes is None and not conditions:
        errors.append(invalid_value(path, "", "specifying one of OnExitCodes and "
                                    "OnPodConditions is required"))
    elif codes is not None and conditions:
        errors.append(invalid_value(path, "", "specifying both OnExitCodes and "
                                    "OnPodConditions is not supported"))
    if isinstance(codes, dict):
        errors += _validate_exit_codes(f"{path}.onExitCodes", codes, names)
    for j, cond in enumerate(conditions or []):
        cpath = f"{path}.onPodConditions[{j}]"
        if not isinstance(cond, dict) or not cond.get("type"):
            errors.append(required(f"{cpath}.type"))
            continue
        if cond.get("status") not in CONDITION_STATUSES:
            errors.append(not_supported(f"{cpath}.status", cond.get("status"),
                                        CONDITION_STATUSES))
    return errors


def _validate_exit_codes(path: str, codes: dict[str, Any], names: set[Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    container = codes.get("containerName")
    if container is not None and container not in names:
        errors.append(invalid_value(f"{path}.containerName", container,
                                    "must be one of the container or initContainer names in "
                                    "the pod template"))
    operator = codes.get("operator")
    if operator not in OPERATORS:
        errors.append(not_supported(f"{path}.operator", operator, OPERATORS))
    values = codes.get("values")
    if not isinstance(values, list) or not values:
        errors.append(required(f"{path}.values"))
        return errors
    if len(values) > MAX_EXIT_CODES:
        errors.append(_too_many(f"{path}.values", len(values), MAX_EXIT_CODES))
    seen: set[int] = set()
    previous: int | None = None
    for k, value in enumerate(values):
        vpath = f"{path}.values[{k}]"
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(invalid_value(vpath, value, "must be an integer"))
            continue
        if operator == "In" and value == 0:
            errors.append(invalid_value(vpath, value, "must not be 0 for the In operator"))
        if value in seen:
            errors.append(duplicate(vpath, value))
        elif previous is not None and value < previous:
            errors.append(invalid_value(vpath, value, "must be ordered"))
        seen.add(value)
        previous = value
    return errors


def matching_rule(job: dict[str, Any], pod: dict[str, Any]) -> tuple[int, str, str] | None:
    """For a failed pod: (rule index, action, condition message) of the first rule whose
    onExitCodes match a terminated container, as the Job controller evaluates them; None when
    no rule matches (the failure counts towards backoffLimit). onPodConditions rules are not
    evaluated: the emulator's kubelet sets no DisruptionTarget conditions."""
    policy = (job.get("spec") or {}).get("podFailurePolicy")
    if not policy:
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    meta = pod.get("metadata") or {}
    for index, rule in enumerate(policy.get("rules") or []):
        codes = rule.get("onExitCodes")
        if not codes:
            continue
        for status in statuses:
            terminated = (status.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if code is None or code == 0:
                continue
            if codes.get("containerName") not in (None, status.get("name")):
                continue
            hit = code in codes["values"]
            if hit == (codes["operator"] == "In"):
                message = (f"Container {status.get('name')} for pod {meta.get('namespace')}/"
                           f"{meta.get('name')} failed with exit code {code} matching "
                           f"{rule['action']} rule at index {index}")
                return index, rule["action"], message
    return None
