"""Label and field selectors with the API server's syntax and semantics.

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`;
commas AND the requirements. `!=` and `notin` also match objects without the key, as in
Kubernetes. Field selectors: `f=v`, `f==v`, `f!=v` over the fields a resource declares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import validation
from .status import ApiError, bad_request

_SPECIAL = set("=!(),<> \t\n")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !exists, in, notin, gt, lt
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "in":
            return self.key in labels and labels[self.key] in self.values
        if op == "notin":
            return self.key not in labels or labels[self.key] not in self.values
        if op == "exists":
            return self.key in labels
        if op == "!exists":
            return self.key not in labels
        value = labels.get(self.key)
        if value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(next(iter(self.values)))
        return number > bound if op == "gt" else number < bound


class LabelSelector:
    """A parsed label selector; `matches(labels)` is true when every requirement holds."""

    def __init__(self, requirements: list[Requirement]) -> None:
        self.requirements = requirements
        # Equality requirements let the store pick candidates from an index.
        self.equalities = {r.key: next(iter(r.values)) for r in requirements
                           if r.op == "in" and len(r.values) == 1}

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t\n":
            i += 1
        elif text.startswith("==", i) or text.startswith("!=", i):
            out.append(text[i:i + 2])
            i += 2
        elif ch in "=!(),<>":
            out.append(ch)
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in _SPECIAL:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _parse_error(detail: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {detail}")


def _check_key(key: str) -> None:
    problems = validation.qualified_name(key)
    if problems:
        raise _parse_error(f'key: Invalid value: "{key}": {problems[0]}')


def _check_value(i: int, value: str) -> None:
    problems = validation.label_value(value)
    if problems:
        raise _parse_error(f'values[{i}][{value}]: Invalid value: "{value}": {problems[0]}')


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parses `text` or raises ApiError 400 worded like the API server."""
    if not text or not text.strip():
        return LabelSelector([])
    toks = _tokens(text)
    reqs: list[Requirement] = []
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(toks):
            raise bad_request(f"found '', expected: identifier after parsing '{text}'")
        pos += 1
        return toks[pos - 1]

    def identifier(what: str) -> str:
        tok = take()
        if tok in ("=", "==", "!=", "!", "(", ")", ",", "<", ">"):
            raise bad_request(f"found '{tok}', expected: {what}")
        return tok

    while True:
        if peek() == "!":
            take()
            key = identifier("identifier")
            _check_key(key)
            reqs.append(Requirement(key, "!exists"))
        else:
            key = identifier("identifier")
            _check_key(key)
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                value = "" if nxt is None or nxt == "," else identifier("identifier")
                _check_value(0, value)
                reqs.append(Requirement(key, "notin" if op == "!=" else "in",
                                        frozenset([value])))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise bad_request("found '', expected: '('")
                values: list[str] = []
                while True:
                    nxt = peek()
                    if nxt in (",", ")"):
                        values.append("")
                    else:
                        values.append(identifier("identifier"))
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        raise bad_request(f"found '{sep}', expected: ',' or ')'")
                for i, v in enumerate(values):
                    _check_value(i, v)
                reqs.append(Requirement(key, op, frozenset(values)))
            elif op in (">", "<"):
                take()
                value = identifier("identifier")
                try:
                    int(value)
                except ValueError:
                    raise _parse_error(
                        f"for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                    ) from None
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", frozenset([value])))
            else:
                raise bad_request(
                    f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")
        nxt = peek()
        if nxt is None:
            return LabelSelector(reqs)
        if take() != ",":
            raise bad_request(f"found '{nxt}', expected: ',' or 'end of string'")


def selector_from_match(selector: dict[str, Any] | None) -> LabelSelector:
    """A metav1.LabelSelector object (matchLabels / matchExpressions) as a LabelSelector."""
    if not selector:
        return LabelSelector([])
    reqs = [Requirement(k, "in", frozenset([v])) for k, v in
            (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]],
                                frozenset(expr.get("values") or [])))
    return LabelSelector(reqs)


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


class FieldSelector:
    def __init__(self, requirements: list[FieldRequirement]) -> None:
        self.requirements = requirements
        self.name = next((r.value for r in requirements
                          if r.equal and r.field == "metadata.name"), None)
        self.namespace = next((r.value for r in requirements
                               if r.equal and r.field == "metadata.namespace"), None)

    def matches(self, obj: dict[str, Any], fields: Mapping[str, Callable[[dict], str]]) -> bool:
        return all((fields[r.field](obj) == r.value) == r.equal for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_field_selector(text: str | None, supported: Mapping[str, Any]) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector([])
    reqs = []
    for term in _split_unescaped(text, ","):
        term = term.strip()
        if not term:
            continue
        for op in ("!=", "==", "="):
            idx = term.find(op)
            if idx > 0:
                field, value = term[:idx].strip(), _unescape(term[idx + len(op):].strip())
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        if field not in supported:
            raise bad_request(f'field label not supported: {field}')
        reqs.append(FieldRequirement(field, value, op != "!="))
    return FieldSelector(reqs)
