"""Watch events decoded to the fields a consumer reads: the same fields, with the same values,
as a full decode would give, whatever the document holds; anything but a change decoded
whole; unreadable lines refused as ValueError without breaking the next line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.kube.projection import WHOLE, EventDecoder, Shape, merged, project

pytestmark = pytest.mark.unit

CHANGES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
SHAPE: Shape = {"metadata": {"name": WHOLE, "labels": WHOLE},
                "status": {"conditions": WHOLE, "phase": WHOLE}}

# Keys drawn from the shape's own names and others, so that documents hit and miss it.
_keys = st.sampled_from(["metadata", "status", "name", "labels", "conditions", "phase",
                         "spec", "managedFields", "é", "a\"b", ""])
_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_keys, inner, max_size=5), max_leaves=30)
_documents = st.dictionaries(_keys, _json, max_size=6)


def reference(value: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """What the projection means, on plain dicts."""
    out: dict[str, Any] = {}
    for key, sub in shape.items():
        if key in value:
            item = value[key]
            nested = sub is not WHOLE and isinstance(item, dict)
            out[key] = reference(item, sub) if nested else item  # type: ignore[arg-type]
    return out


@given(_documents, st.sampled_from(sorted(CHANGES)))
def test_a_change_decodes_to_the_shapes_fields_with_the_full_decodes_values(
        obj: dict[str, Any], kind: str) -> None:
    decode = EventDecoder(SHAPE, CHANGES)
    line = json.dumps({"type": kind, "object": obj}).encode()
    assert decode(line) == {"type": kind, "object": reference(obj, SHAPE)}
    assert project(obj, SHAPE) == reference(obj, SHAPE)  # the same on plain dicts


def test_a_job_loses_what_the_bookkeeping_does_not_read() -> None:
    job = {"kind": "Job", "metadata": {
        "name": "prov-a", "labels": {"x": "1"}, "resourceVersion": "9",
        "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}]},
        "spec": {"template": {"spec": {"containers": [{"name": "runner"}]}}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "active": 1}}
    decoded = EventDecoder(SHAPE, CHANGES)(json.dumps({"type": "MODIFIED", "object": job})
                                           .encode())
    assert decoded["object"] == {"metadata": {"name": "prov-a", "labels": {"x": "1"}},
                                 "status": {"conditions": [{"type": "Complete",
                                                            "status": "True"}]}}


def test_an_error_event_is_decoded_whole() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                        "message": "too old resource version"}}
    assert EventDecoder(SHAPE, CHANGES)(json.dumps(gone).encode()) == gone


@pytest.mark.parametrize("line", [b"{bad", b"", b"[1, 2]", b"12", b'"text"',
                                  b'{"type": "ADDED", "object": {"n": 1e999}}',
                                  b'{"type": "ADDED", "object": {"n": 123456789012345678901234}}',
                                  b"\xff\xfe"])
def test_an_unreadable_line_is_a_value_error_and_the_next_line_decodes(line: bytes) -> None:
    decode = EventDecoder(SHAPE, CHANGES)
    with pytest.raises(ValueError, match=f"unreadable watch event \\({len(line)} bytes\\)"):
        decode(line)
    good = {"type": "ADDED", "object": {"metadata": {"name": "after"}}}
    assert decode(json.dumps(good).encode()) == good


def test_a_decoded_event_outlives_the_next_line() -> None:
    """Nothing decoded points into the parser's buffer, which the next line reuses."""
    decode = EventDecoder(SHAPE, CHANGES)
    first = decode(b'{"type": "ADDED", "object": {"metadata": {"labels": {"k": "one"}}}}')
    decode(b'{"type": "ADDED", "object": {"metadata": {"labels": {"k": "two"}}}}')
    assert first["object"]["metadata"]["labels"] == {"k": "one"}


def test_merged_shapes_keep_both_fields_and_a_whole_field_wins() -> None:
    one: Shape = {"metadata": {"name": WHOLE}, "status": {"phase": WHOLE}}
    two: Shape = {"metadata": {"resourceVersion": WHOLE}, "status": WHOLE}
    assert merged(one, two) == {"metadata": {"name": WHOLE, "resourceVersion": WHOLE},
                                "status": WHOLE}
    assert merged(two, one) == merged(one, two)
