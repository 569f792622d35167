"""Masking secret values wherever text leaves the process (log lines, result fields).

Secrets should never reach such text in the first place; this is the second line of
defence, in case a library or a remote command echoes one back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

MASK = "***"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        for secret in secrets:
            if not secret:
                continue
            self._values.append(secret)
            # Multi-line secrets (private keys) may surface line by line.
            self._values += [line.strip() for line in secret.splitlines()
                             if len(line.strip()) >= 16]
        self._values = sorted(set(self._values), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text


class ContextFilter(logging.Filter):
    """Adds the run's context fields to every record and masks secrets in it."""

    def __init__(self, context: dict[str, Any], redact: Redactor) -> None:
        super().__init__()
        self.context = context
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context.items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.error = self.redact(f"{type(exc).__name__}: {exc}")
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in {"msg", "name", "levelname", "pathname",
                                                      "filename", "module", "funcName"}:
                setattr(record, key, self.redact(value))
        return True


def install(context: dict[str, Any], redact: Redactor) -> None:
    for handler in logging.getLogger().handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, ContextFilter)]
        handler.addFilter(ContextFilter(context, redact))
