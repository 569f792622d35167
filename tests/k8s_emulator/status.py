"""Kubernetes `Status` bodies and the error type the emulator raises to answer with one.

The shapes, reasons and message texts follow what kube-apiserver returns, so client code that
parses `ApiException.body` sees the same thing it would see from a real cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

# Messages the API server uses when it has nothing more specific to say.
GENERIC_MESSAGES: dict[int, str] = {
    400: "the server rejected our request for an unknown reason",
    404: "the server could not find the requested resource",
    405: "the server does not allow this method on the requested resource",
    409: "the server reported a conflict",
    410: "the server could not find the requested resource",
    422: "the server rejected our request due to an error in our request",
    429: "Too many requests, please try again later.",
    500: "an error on the server has prevented the request from succeeding",
    503: "the server is currently unable to handle the request",
    504: "Timeout: request did not complete within requested timeout - context deadline "
         "exceeded",
}


@dataclass(frozen=True)
class GroupResource:
    """Enough of a resource's identity to word errors: `jobs.batch`, `pods`."""

    group: str
    plural: str
    kind: str

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


@dataclass
class FieldError:
    """One cause of a 422: the field path, the cause reason and its text."""

    field: str
    reason: str
    detail: str

    @property
    def body(self) -> str:
        return self.detail

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def invalid_value(path: str, value: Any, detail: str) -> FieldError:
    shown = value if isinstance(value, str) else _go_repr(value)
    text = f'Invalid value: "{shown}"' if isinstance(value, str) else f"Invalid value: {shown}"
    return FieldError(path, "FieldValueInvalid", f"{text}: {detail}" if detail else text)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, "FieldValueRequired",
                      f"Required value: {detail}" if detail else "Required value")


def not_supported(path: str, value: Any, supported: list[str]) -> FieldError:
    options = ", ".join(f'"{s}"' for s in supported)
    return FieldError(path, "FieldValueNotSupported",
                      f'Unsupported value: "{value}": supported values: {options}')


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(path, "FieldValueDuplicate", f'Duplicate value: "{value}"')


def too_long(path: str, limit: int) -> FieldError:
    return FieldError(path, "FieldValueTooLong", f"Too long: must have at most {limit} bytes")


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(path, "FieldValueForbidden", f"Forbidden: {detail}")


def _go_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


@dataclass
class ApiError(Exception):
    """Raised anywhere in request handling; rendered as a Kubernetes `Status`."""

    code: int
    message: str
    reason: str = ""
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The server leaves `reason` out for errors its storage did not classify.
    unclassified: bool = False

    def __post_init__(self) -> None:
        if not self.reason and not self.unclassified:
            self.reason = REASONS.get(self.code, "Unknown")
        super().__init__(self.message)

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            body["reason"] = self.reason
        if self.details:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(gr: GroupResource, name: str, kind: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if gr.group:
        details["group"] = gr.group
    details["kind"] = kind or gr.plural
    return details


def not_found(gr: GroupResource, name: str) -> ApiError:
    return ApiError(404, f'{gr.qualified} "{name}" not found', "NotFound", _details(gr, name))


def already_exists(gr: GroupResource, name: str) -> ApiError:
    return ApiError(409, f'{gr.qualified} "{name}" already exists', "AlreadyExists",
                    _details(gr, name))


def conflict(gr: GroupResource, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {gr.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        "Conflict",
        _details(gr, name),
    )


def invalid(gr: GroupResource, name: str, errors: list[FieldError]) -> ApiError:
    summary = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details = _details(gr, name, kind=gr.kind)
    details["causes"] = [
        {"reason": e.reason, "message": e.body, "field": e.field} for e in errors
    ]
    return ApiError(422, f'{gr.qualified_kind} "{name}" is invalid: {summary}', "Invalid", details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


def method_not_allowed() -> ApiError:
    return ApiError(405, GENERIC_MESSAGES[405], "MethodNotAllowed")


def expired(message: str) -> ApiError:
    return ApiError(410, message, "Expired")


def too_old_resource_version(requested: int, oldest: int) -> ApiError:
    return expired(f"too old resource version: {requested} ({oldest})")


def injected(code: int, message: str | None = None, retry_after: float | None = None) -> ApiError:
    """An error answered by fault injection, worded like the server's own for that code."""
    details: dict[str, Any] | None = None
    headers: dict[str, str] = {}
    text = message or GENERIC_MESSAGES.get(code, "injected failure")
    if code == 500 and message is None:
        text = "Internal error occurred: injected failure"
        details = {"causes": [{"message": "injected failure"}]}
    if retry_after is not None:
        seconds = max(1, round(retry_after))
        headers["Retry-After"] = str(seconds)
        details = {**(details or {}), "retryAfterSeconds": seconds}
    return ApiError(code, text, REASONS.get(code, "Unknown"), details, headers)


def success(gr: GroupResource, name: str, uid: str) -> dict[str, Any]:
    details = _details(gr, name)
    details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}
