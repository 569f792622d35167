"""Decoding only the fields a consumer reads out of a watch event.

Every watch event carries a whole Job or pod: several KiB, most of it ``managedFields`` and
``spec``, while the bookkeeping reads a few fields of the metadata and the status. Building
Python objects for all of it was most of what watching cost per event. simdjson parses the
text into its own compact form (every byte is still validated) and Python objects are built
only for the fields a ``Shape`` names.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import orjson
import simdjson


class Whole(enum.Enum):
    """A shape's leaf: the field's whole value (whatever it holds)."""

    VALUE = "whole value"


WHOLE = Whole.VALUE
# Which fields to keep: a key maps to WHOLE or to the shape of the object it holds.
Shape = Mapping[str, "Shape | Whole"]
_MISSING = object()


def merged(first: Shape, second: Shape) -> Shape:
    """Both shapes' fields (WHOLE wins over a narrower shape of the same field)."""
    out: dict[str, Shape | Whole] = dict(first)
    for key, sub in second.items():
        mine = out.get(key)
        if mine is None:
            out[key] = sub
        elif mine is WHOLE or sub is WHOLE:
            out[key] = WHOLE
        else:
            assert not isinstance(mine, Whole) and not isinstance(sub, Whole)
            out[key] = merged(mine, sub)
    return out


def project(value: Any, shape: Shape) -> dict[str, Any]:
    """The fields of ``shape`` that ``value`` (a dict or a simdjson object) has, as plain
    Python objects. A field that holds something other than an object where the shape
    names sub-fields is kept whole: the consumer sees what the server sent."""
    out: dict[str, Any] = {}
    for key, sub in shape.items():
        item = value.get(key, _MISSING)
        if item is _MISSING:
            continue
        if sub is not WHOLE and isinstance(item, (simdjson.Object, dict)):
            assert not isinstance(sub, Whole)
            out[key] = project(item, sub)
        else:
            out[key] = plain(item)
    return out


def plain(item: Any) -> Any:
    """A simdjson value as Python objects (dicts and lists); anything else as it is."""
    if isinstance(item, simdjson.Object):
        return item.as_dict()
    if isinstance(item, simdjson.Array):
        return item.as_list()
    return item


def decode_event(line: bytes) -> dict[str, Any]:
    """A whole watch event. ValueError if the line is not a JSON object."""
    event = orjson.loads(line)
    if not isinstance(event, dict):
        raise ValueError(f"a watch event is a JSON object, not {type(event).__name__}")
    return event


class EventDecoder:
    """Watch events with their object cut to ``shape``; events of any other type than
    ``projected`` (an ERROR's Status, say) are decoded whole. One per thread: the parser
    holds the last document."""

    def __init__(self, shape: Shape, projected: frozenset[str]) -> None:
        self.shape = shape
        self.projected = projected
        self._parser = simdjson.Parser()

    def __call__(self, line: bytes) -> dict[str, Any]:
        try:
            return self._decode(line)
        except (ValueError, RuntimeError) as exc:  # RuntimeError: an integer beyond 64 bits
            # A failed decode may leave views of the document alive (in the traceback),
            # and a parser refuses new documents while they are: start a fresh one.
            self._parser = simdjson.Parser()
            raise ValueError(f"unreadable watch event ({len(line)} bytes): {exc}") from None
        except BaseException:
            self._parser = simdjson.Parser()
            raise

    def _decode(self, line: bytes) -> dict[str, Any]:
        # Every view of the document is local to this call and dies with it, so the
        # parser may take the next line.
        document = self._parser.parse(line)
        if not isinstance(document, simdjson.Object):
            shown = type(plain(document)).__name__
            raise ValueError(f"a watch event is a JSON object, not {shown}")
        kind = document.get("type")
        obj = document.get("object")
        if kind not in self.projected or not isinstance(obj, simdjson.Object):
            whole: dict[str, Any] = document.as_dict()
            return whole
        return {"type": kind, "object": project(obj, self.shape)}
