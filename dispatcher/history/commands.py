"""``python -m dispatcher history <server>`` and ``python -m dispatcher show-run <id>``.

Every failure is one line on stderr with an exit code, never a traceback: the history off
(no DATABASE_URL: 2), the database unreachable or refusing (3, naming the URL without its
password and what to check), an unknown server or request (4).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from dispatcher.history.reading import RunRecord, run_by_id, server_known, server_runs
from dispatcher.history.rendering import as_json, detail, table
from dispatcher.history.settings import HistorySettings

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
DB_HINT = ("check DATABASE_URL, DATABASE_PASSWORD, that PostgreSQL is up, that a "
           "NetworkPolicy lets this pod reach it, and that the login role is a member of "
           "infra_service_dispatcher")
CONNECT_TIMEOUT_SECONDS = 5.0

T = TypeVar("T")


class CommandFailed(Exception):
    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


def _settings() -> HistorySettings:
    try:
        settings = HistorySettings()
    except ValidationError as exc:
        names = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        raise CommandFailed(f"invalid run history setting(s): {names}", EXIT_CONFIG) from None
    if not settings.enabled:
        raise CommandFailed("the run history is off: DATABASE_URL is not set in this "
                            "dispatcher's environment (chart: dispatcher.history)", EXIT_CONFIG)
    return settings


async def _with_db(settings: HistorySettings,
                   read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    url, password = settings.database_url, settings.database_password
    assert url is not None
    where = settings.shown_url
    try:
        conn = await asyncpg.connect(
            url.get_secret_value(), password=password.get_secret_value() if password else None,
            timeout=CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:
        raise CommandFailed(f"cannot reach PostgreSQL at {where}: {_first_line(exc)}; "
                            f"{DB_HINT}", EXIT_UNREACHABLE) from None
    try:
        return await read(conn)
    except asyncpg.UndefinedTableError:
        raise CommandFailed(f"PostgreSQL at {where} has no runs table: apply the migrations "
                            "(python -m runner_image migrate)", EXIT_UNREACHABLE) from None
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise CommandFailed(f"PostgreSQL at {where} refused the query: {_first_line(exc)}; "
                            f"{DB_HINT}", EXIT_UNREACHABLE) from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(". ") if text else type(exc).__name__


async def _history(args: argparse.Namespace) -> int:
    settings = _settings()

    async def read(conn: asyncpg.Connection) -> tuple[bool, list[RunRecord]]:
        runs = await server_runs(conn, args.server_handle, args.limit)
        return (True if runs else await server_known(conn, args.server_handle)), runs

    known, runs = await _with_db(settings, read)
    if not known:
        raise CommandFailed(f"unknown server {args.server_handle!r}: no such handle in the "
                            "servers table and no run recorded for it", EXIT_NOT_FOUND)
    if args.json:
        print(json.dumps([as_json(r) for r in runs], indent=2))
    elif not runs:
        print(f"no runs recorded for {args.server_handle} in the last "
              f"{settings.retention_days} days")
    else:
        print(table(runs))
    return 0


async def _show_run(args: argparse.Namespace) -> int:
    settings = _settings()
    run = await _with_db(settings, lambda conn: run_by_id(conn, args.request_id))
    if run is None:
        raise CommandFailed(f"no run recorded with request id {args.request_id!r} (unknown, "
                            f"or older than {settings.retention_days} days)", EXIT_NOT_FOUND)
    print(json.dumps(as_json(run), indent=2) if args.json else detail(run))
    return 0


def _run(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
         args: argparse.Namespace) -> int:
    try:
        return asyncio.run(command(args))
    except CommandFailed as exc:
        print(exc, file=sys.stderr)
        return exc.code


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    history = sub.add_parser("history", help="a server's runs, newest first (PostgreSQL)")
    history.add_argument("server_handle")
    history.add_argument("-n", "--limit", type=_positive, default=20)
    history.add_argument("--json", action="store_true", help="JSON for scripts")
    history.set_defaults(func=lambda a: _run(_history, a))
    show = sub.add_parser("show-run", help="one run in full: phases, outcome, failure")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    show.set_defaults(func=lambda a: _run(_show_run, a))
