"""Fault injection rules and request statistics.

A rule matches requests by verb, resource (`jobs`, `jobs/status`, `pods/log`, `*`),
namespace and name; the next `count` matching requests (after letting `skip` pass) then wait
`delay` seconds and/or fail with `status` (a proper Status body; 429 and 503 carry
Retry-After when `retry_after` is set) or are dropped: the connection is closed without an
answer. With `applied`, the request takes effect first and only its answer fails or is lost
- the "did my create happen?" case of a timeout after a successful write.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FaultRule(BaseModel):
    """One fault; fields left out match anything / do nothing."""

    model_config = ConfigDict(extra="forbid")

    verb: str = Field("*", description="create|get|list|watch|update|patch|delete|"
                                        "deletecollection|* (default *)")
    resource: str = Field("*", description="resource with subresource, e.g. jobs, jobs/status")
    namespace: str | None = Field(None, description="only this namespace (default any)")
    name: str | None = Field(None, description="only this object name (default any)")
    status: int | None = Field(None, ge=400, le=599, description="answer with this HTTP code")
    message: str | None = Field(None, description="Status message (default: the server's)")
    retry_after: float | None = Field(None, ge=0, description="Retry-After seconds")
    delay: float = Field(0.0, ge=0, description="seconds to wait before answering")
    drop: bool = Field(False, description="close the connection instead of answering")
    applied: bool = Field(False, description="let the request take effect, then fail or drop "
                                             "its answer (default: fail before applying)")
    count: int | None = Field(1, ge=1, description="matching requests affected; null = all")
    skip: int = Field(0, ge=0, description="matching requests let through first")

    @model_validator(mode="after")
    def _does_something(self) -> FaultRule:
        if not (self.status or self.delay or self.drop):
            raise ValueError("a fault needs status, delay or drop")
        return self

    def matches(self, verb: str, resource: str, namespace: str | None, name: str | None) -> bool:
        return ((self.verb == "*" or self.verb == verb)
                and (self.resource == "*" or self.resource == resource)
                and (self.namespace is None or self.namespace == namespace)
                and (self.name is None or self.name == name))


class Faults:
    """The active rules, consumed in the order they were added."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self.fired = 0

    def add(self, rule: FaultRule | dict[str, Any]) -> FaultRule:
        rule = rule if isinstance(rule, FaultRule) else FaultRule.model_validate(rule)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def take(self, verb: str, resource: str, namespace: str | None,
             name: str | None) -> FaultRule | None:
        if not self.rules:
            return None
        for rule in self.rules:
            if not rule.matches(verb, resource, namespace, name):
                continue
            if rule.skip:
                rule.skip -= 1
                continue
            if rule.count is not None:
                rule.count -= 1
                if rule.count == 0:
                    self.rules.remove(rule)
            self.fired += 1
            return rule
        return None

    def describe(self) -> list[dict[str, Any]]:
        return [r.model_dump() for r in self.rules]


class Stats:
    """Request counts by verb, resource and HTTP status code (0 = dropped connection)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, int]] = Counter()

    def record(self, verb: str, resource: str, code: int) -> None:
        self.counts[(verb, resource, code)] += 1

    def clear(self) -> None:
        self.counts.clear()

    def count(self, verb: str | None = None, resource: str | None = None,
              code: int | None = None) -> int:
        return sum(n for (v, r, c), n in self.counts.items()
                   if (verb is None or v == verb) and (resource is None or r == resource)
                   and (code is None or c == code))

    def snapshot(self) -> dict[str, Any]:
        by_verb: Counter[str] = Counter()
        by_resource: Counter[str] = Counter()
        by_code: Counter[str] = Counter()
        for (verb, resource, code), n in self.counts.items():
            by_verb[verb] += n
            by_resource[resource] += n
            by_code[str(code)] += n
        return {
            "total": sum(self.counts.values()),
            "by_verb": dict(by_verb),
            "by_resource": dict(by_resource),
            "by_code": dict(by_code),
            "requests": [{"verb": v, "resource": r, "code": c, "count": n}
                         for (v, r, c), n in sorted(self.counts.items())],
        }
