"""``python -m runner_image [run|migrate|register-server]`` (``run`` is the default).

``run`` is what the Kubernetes Job executes: it reads PROVISIONER_MESSAGE and the settings
from the environment, provisions the server, writes its status and publishes the result
(runner_image/run.py, top to bottom).
The process exit code says how it ended (see contracts/exit_codes.py / README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from typing import NoReturn

import asyncpg

from contracts.exit_codes import ExitCode
from contracts.logs import configure_logging
from runner_image import redaction
from runner_image.db import connect
from runner_image.migrations import MigrationError, apply_migrations
from runner_image.register import Registration, register
from runner_image.run import run
from runner_image.settings import (
    SECRET_VARIABLES,
    ConfigError,
    DatabaseSettings,
    load,
)

log = logging.getLogger("runner_image")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runner_image", description=__doc__,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the job described by PROVISIONER_MESSAGE (default)")
    sub.add_parser("migrate", help="apply pending database migrations")
    reg = sub.add_parser("register-server", help="add or update a server in the servers table",
                         allow_abbrev=False)
    reg.add_argument("--handle", required=True)
    reg.add_argument("--address", required=True, help="IP address or DNS name")
    reg.add_argument("--port", type=int, default=22)
    reg.add_argument("--user", default="root", help="SSH login user")
    reg.add_argument("--provider", default="time4vps")
    reg.add_argument("--provider-server-id")
    reg.add_argument("--password-env", default="SERVER_ROOT_PASSWORD",
                     help="environment variable holding the root password (never pass it as an "
                          "argument)")
    reg.add_argument("--clear-password", action="store_true")
    reg.add_argument("--forget-host-key", action="store_true",
                     help="accept a new host key on the next run (after an out-of-band reinstall)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("runner", os.environ.get("LOG_LEVEL", "INFO"))
    if args.command == "migrate":
        return asyncio.run(_migrate())
    if args.command == "register-server":
        return asyncio.run(_register(args))
    return asyncio.run(run())


# -- migrate / register-server ---------------------------------------------------------------
async def _open_database(command: str) -> tuple[DatabaseSettings, asyncpg.Connection] | None:
    """The database settings and a connection for an admin command; None (logged) if the
    settings are invalid or the database cannot be reached."""
    try:
        db = load(DatabaseSettings)
        return db, await connect(db)
    except (ConfigError, OSError) as exc:
        log.error(f"{command} failed", extra={"error": str(exc)})
        return None


async def _migrate() -> int:
    opened = await _open_database("migrate")
    if opened is None:
        return ExitCode.REJECTED
    _, conn = opened
    try:
        applied = await apply_migrations(conn)
    except MigrationError as exc:
        log.error("migrate failed", extra={"error": str(exc)})
        return ExitCode.FAILED
    finally:
        await conn.close()
    log.info("migrations up to date", extra={"applied": applied})
    return ExitCode.SUCCESS


async def _register(args: argparse.Namespace) -> int:
    names = (*SECRET_VARIABLES, args.password_env)
    redact = redaction.Redactor(os.environ.get(n, "") for n in names)
    redaction.install({"server_handle": args.handle}, redact)
    reg = Registration(handle=args.handle, address=args.address, port=args.port, user=args.user,
                       provider=args.provider, provider_server_id=args.provider_server_id,
                       password_env=args.password_env, clear_password=args.clear_password,
                       forget_host_key=args.forget_host_key)
    opened = await _open_database("register-server")
    if opened is None:
        return ExitCode.REJECTED
    db, conn = opened
    try:
        inserted = await register(conn, db, reg)
    except ConfigError as exc:
        log.error("register-server failed", extra={"error": str(exc)})
        return ExitCode.REJECTED
    finally:
        await conn.close()
    log.info("server registered" if inserted else "server updated",
             extra={"address": args.address, "port": args.port})
    return ExitCode.SUCCESS


def entrypoint() -> NoReturn:
    """The console entry point: ``main()``, then an immediate exit.

    What is loaded so far lives as long as the process: frozen, the collector never scans it
    again (a full collection over it took ~45 ms, paid in the middle of reporting).
    At the exit every connection is closed, every child stopped, the result published and the
    logs flushed below; the interpreter's own teardown of the ~2,000 modules ansible-runner,
    pydantic and asyncpg bring would only add about 0.15 s to every Job.
    """
    gc.freeze()
    gc.enable()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
