"""The run history as an SRE reads it: a table of a server's runs, one run in full, or JSON
for scripts (the same fields, times in ISO 8601 UTC)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from contracts.run_history import Phase
from dispatcher.history.reading import RunRecord

_TABLE = (("QUEUED (UTC)", 16), ("ACTION", 9), ("STATUS", 11), ("KIND", 18), ("TOOK", 8),
          ("REQUEST", 0))


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if at else "-"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def as_json(run: RunRecord) -> dict[str, Any]:
    data = run.model_dump(mode="json")
    data["duration_seconds"] = (round(run.duration_seconds, 3)
                                if run.duration_seconds is not None else None)
    return data


def table(runs: list[RunRecord]) -> str:
    """Newest first, one line per run; a failure's task on the line below it."""
    head = "  ".join(name.ljust(width) for name, width in _TABLE).rstrip()
    lines = [head]
    for run in runs:
        cells = (_when(run.queued_at), run.action or "-", run.status or "(running)",
                 run.error_kind or "-", _took(run.duration_seconds), run.request_id)
        lines.append("  ".join(str(c).ljust(w) for c, (_, w) in zip(cells, _TABLE,
                                                                     strict=True)).rstrip())
        if run.failed_task:
            lines.append(f"    failed task: {run.failed_task}"
                         + (f" on {run.failed_host}" if run.failed_host else ""))
    return "\n".join(lines)


def detail(run: RunRecord) -> str:
    """One run in full: identity, times, phases, outcome, failure."""
    # In the order the run goes through them (jsonb keeps keys in its own order).
    order = {phase.value: i for i, phase in enumerate(Phase)}
    phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in sorted(
        run.phases.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
    rows: list[tuple[str, object]] = [
        ("request", run.request_id), ("server", run.server_handle),
        ("action", run.action), ("job", run.job_name),
        ("dispatcher replica", run.dispatcher_replica), ("runner image", run.runner_image),
        ("runner version", run.runner_version),
        ("queued", _iso(run.queued_at)), ("job created", _iso(run.launched_at)),
        ("started", _iso(run.started_at)), ("finished", _iso(run.finished_at)),
        ("took", _took(run.duration_seconds)), ("phases", phases or "-"),
        ("status", run.status or "(not finished, or not recorded)"),
        ("error kind", run.error_kind), ("reported by", run.reported_by),
        ("failed task", run.failed_task), ("failed host", run.failed_host),
        ("message", run.message),
        ("changed / ok", f"{_or_dash(run.changed_count)} / {_or_dash(run.ok_count)}"),
        ("ssh port", f"{_or_dash(run.ssh_port_before)} -> {_or_dash(run.ssh_port_after)}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {_or_dash(value)}" for name, value in rows)


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else None


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2)
