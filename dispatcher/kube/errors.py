"""Turning Kubernetes client failures into decisions: exists, retry, or give up."""

from __future__ import annotations

import json
from dataclasses import dataclass

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

# 401 means expired or rotated credentials (in-cluster token files rotate): reload them
# and retry. 403/404 on create usually mean RBAC or a missing namespace: the operator fixes
# them, so the message waits in Redis instead of being dead-lettered.
UNAUTHORIZED = 401
RETRYABLE_STATUSES = {0, UNAUTHORIZED, 403, 404, 408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ApiFailure:
    status: int  # HTTP status; 0 when no answer (refused, reset, timeout)
    reason: str  # Kubernetes Status reason (AlreadyExists, Invalid...) or exception name
    message: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES or self.status >= 500


def describe(exc: BaseException) -> ApiFailure:
    if isinstance(exc, ApiException):
        reason, message = exc.reason or "", ""
        body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
        if body:
            try:
                status_body = json.loads(body)
                reason = status_body.get("reason") or reason
                message = status_body.get("message") or ""
            except (ValueError, AttributeError):
                message = body[:300]
        retry_after = None
        headers = exc.headers or {}
        if "Retry-After" in headers:
            try:
                retry_after = float(headers["Retry-After"])
            except ValueError:
                retry_after = None
        return ApiFailure(int(exc.status or 0), str(reason), message or str(reason), retry_after)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return ApiFailure(0, type(exc).__name__, str(exc))
    raise exc


class KubeCallFailed(Exception):
    """A Kubernetes API call failed; ``failure`` says how. kube/ raises only this family:
    whether to retry is the caller's call (``failure.retryable`` is what may pass)."""

    def __init__(self, text: str, failure: ApiFailure) -> None:
        super().__init__(text)
        self.failure = failure


class JobCreateFailed(KubeCallFailed):
    """A Job create failed. ``maybe_applied``: no answer or a 5xx, so the create may have
    been stored all the same (the next 409 may then be our own Job)."""

    def __init__(self, text: str, failure: ApiFailure, *, maybe_applied: bool) -> None:
        super().__init__(text, failure)
        self.maybe_applied = maybe_applied


def call_failed(what: str, exc: BaseException) -> KubeCallFailed:
    """``exc`` (a client or connection error) as kube's own error, naming ``what``."""
    failure = describe(exc)
    status = f"HTTP {failure.status} " if failure.status else ""
    return KubeCallFailed(f"{what}: {status}{failure.reason}: {failure.message}", failure)
