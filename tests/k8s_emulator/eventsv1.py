"""events.k8s.io/v1 Events: the same objects as core/v1 Events, in the newer shape.

The API server stores one Event and serves it in both versions, converting field by field
(regarding <-> involvedObject, note <-> message, reportingController <-> reportingComponent,
deprecatedSource/FirstTimestamp/LastTimestamp/Count <-> source/firstTimestamp/...). The
emulator stores core/v1 and converts at the edge, so an Event a controller records through
events.k8s.io/v1 shows in `kubectl describe` (which lists core/v1 Events by involvedObject).

Emulated verbs: create, get and list (with field selectors in either vocabulary). Update,
patch, delete and watch through events.k8s.io/v1 answer 405: nothing here uses them.
"""

from __future__ import annotations

import copy
from typing import Any

from . import validation as v
from .status import FieldError, invalid_value, not_supported, required, too_long

Obj = dict[str, Any]
VERBS = ["create", "get", "list"]
API_VERSION = "events.k8s.io/v1"
# events.k8s.io/v1 name <-> core/v1 name, for top-level fields that only change names.
_RENAMED = {
    "regarding": "involvedObject", "note": "message", "reportingController":
    "reportingComponent", "deprecatedSource": "source", "deprecatedFirstTimestamp":
    "firstTimestamp", "deprecatedLastTimestamp": "lastTimestamp", "deprecatedCount": "count",
}
_SAME = ("metadata", "eventTime", "series", "related", "action", "reason", "type",
         "reportingInstance")
NOTE_MAX = 1024
FIELD_MAX = 128


def field_selector(text: str | None) -> str | None:
    """A v1 field selector in the core vocabulary the store indexes."""
    if not text:
        return text
    out = []
    for term in text.split(","):
        for new, old in (("regarding.", "involvedObject."),
                         ("reportingController", "reportingComponent"),
                         ("deprecatedSource", "source")):
            if term.startswith(new):
                term = old + term[len(new):]
        out.append(term)
    return ",".join(out)


def to_core(event: Obj) -> Obj:
    core: Obj = {"apiVersion": "v1", "kind": "Event"}
    for key in _SAME:
        if key in event:
            core[key] = copy.deepcopy(event[key])
    for new, old in _RENAMED.items():
        if new in event:
            core[old] = copy.deepcopy(event[new])
    return core


def from_core(core: Obj) -> Obj:
    event: Obj = {"apiVersion": API_VERSION, "kind": "Event"}
    for key in _SAME:
        if core.get(key) is not None:
            event[key] = copy.deepcopy(core[key])
    for new, old in _RENAMED.items():
        value = core.get(old)
        if value not in (None, "", 0, {}):
            event[new] = copy.deepcopy(value)
    return event


def validate(event: Obj) -> list[FieldError]:
    """What the API server checks on an events.k8s.io/v1 create (ValidateEventCreate)."""
    errors: list[FieldError] = []
    if not event.get("eventTime"):
        errors.append(required("eventTime"))
    controller = event.get("reportingController")
    if not controller:
        errors.append(required("reportingController"))
    else:
        errors += v.each("reportingController", controller, v.qualified_name(controller))
    for key in ("reportingInstance", "action", "reason"):
        value = event.get(key)
        if not value:
            errors.append(required(key))
        elif len(value) > FIELD_MAX:
            errors.append(too_long(key, FIELD_MAX))
    if event.get("type") not in ("Normal", "Warning"):
        errors.append(not_supported("type", event.get("type"), ["Normal", "Warning"]))
    if len(event.get("note") or "") > NOTE_MAX:
        errors.append(too_long("note", NOTE_MAX))
    regarding = event.get("regarding") or {}
    namespace = (event.get("metadata") or {}).get("namespace")
    if regarding.get("namespace") and namespace and regarding["namespace"] != namespace:
        errors.append(invalid_value("regarding.namespace", regarding["namespace"],
                                    "does not match event.namespace"))
    for key in ("deprecatedSource", "deprecatedFirstTimestamp", "deprecatedLastTimestamp",
                "deprecatedCount"):
        if event.get(key):
            errors.append(invalid_value(key, "", "needs to be unset"))
    return errors
