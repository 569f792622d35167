"""The one-line termination message Kubernetes shows for the runner's container.

The kubelet copies the file at the container's ``terminationMessagePath`` (by default
``/dev/termination-log``) into the pod status, where ``kubectl describe pod`` shows it as
``Message``. The runner writes ``<kind>: <summary>`` there when a run does not succeed, so an
SRE sees *why* without Redis or logs. The kubelet keeps at most 4096 bytes per container;
the message is bounded well below that, on one line, and masked by the run's redactor (the
second line of defence: messages are written to carry no secret in the first place).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from contracts.exit_codes import ExitCode
from contracts.results import ErrorKind
from runner_image.redaction import Redactor

log = logging.getLogger(__name__)

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
PATH_VARIABLE = "TERMINATION_MESSAGE_PATH"
COULD_NOT_REPORT = int(ExitCode.COULD_NOT_REPORT)
# The message's kind when no result reached Redis: not a result kind, as there is no result.
COULD_NOT_REPORT_KIND = "could_not_report"
# Bytes, UTF-8 encoded. Kubernetes truncates at 4096; a reason an SRE reads fits far less.
MAX_MESSAGE_BYTES = 1024
ELLIPSIS = "..."
_WHITESPACE = re.compile(r"\s+")


def format_message(kind: str, summary: str, redact: Redactor, *,
                   limit: int = MAX_MESSAGE_BYTES) -> str:
    """``<kind>: <summary>`` on one line, secrets masked, at most ``limit`` UTF-8 bytes.

    Masking happens before collapsing whitespace and truncating, so neither can split a
    secret into pieces the redactor no longer recognises.
    """
    text = redact(f"{kind}: {summary}")
    text = _WHITESPACE.sub(" ", text).strip()
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    room = max(limit - len(ELLIPSIS), 0)
    # errors="ignore" drops a multi-byte character cut in half at the boundary.
    return encoded[:room].decode("utf-8", errors="ignore") + ELLIPSIS


def write_termination_message(path: Path, kind: str, summary: str, redact: Redactor) -> bool:
    """Write the message; False (logged, not raised) when the file cannot be written.

    Outside Kubernetes (a developer's machine, the local executor) ``/dev/termination-log``
    does not exist and ``/dev`` is not writable: the run's result on Redis is the record that
    matters, so a missing directory or a refused write never changes the run's outcome.
    """
    if not path.parent.is_dir():
        log.debug("no termination log directory", extra={"path": str(path)})
        return False
    try:
        path.write_text(format_message(kind, summary, redact) + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("could not write the termination message",
                    extra={"path": str(path), "error": type(exc).__name__})
        return False
    return True


def configured_path() -> Path | None:
    """``TERMINATION_MESSAGE_PATH`` if set (the container's terminationMessagePath, when a
    Job sets another one); else the Kubernetes default, but only if it exists: the kubelet
    mounts that file into every container, so outside a pod (the local executor, a
    developer's machine, tests running as root) nothing is created under /dev."""
    configured = os.environ.get(PATH_VARIABLE)
    if configured:
        return Path(configured)
    return DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.is_file() else None


def write_for_outcome(error_kind: ErrorKind | None, error_message: str | None, exit_code: int,
                      redact: Redactor, path: Path | None = None) -> bool:
    """The message for a run that did not succeed; nothing for a success (the kubelet then
    shows no message, which is what a success needs)."""
    target = path or configured_path()
    if exit_code == 0 or target is None:
        return False
    kind: str = error_kind or ErrorKind.INTERNAL
    summary = error_message or f"the runner exited with code {exit_code}"
    if exit_code == COULD_NOT_REPORT:
        kind, summary = COULD_NOT_REPORT_KIND, f"no result was published; the run ended with " \
            f"{error_kind or 'no error'}: {summary}"
    return write_termination_message(target, kind, summary, redact)
