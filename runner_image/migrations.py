"""Schema migrations: ordered SQL files, each applied once and recorded.

``python -m runner_image migrate`` applies the files in ``migrations/`` in name order. A
migration runs in one transaction together with its record in ``schema_migrations``; an
advisory lock serialises concurrent invocations; an applied file whose content changed is
an error (write a new migration instead).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x1F5A_0001  # arbitrary, constant: "infra-service migrations"

log = logging.getLogger(__name__)


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(p.stem, p) for p in sorted(directory.glob("*.sql"))]


async def apply_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR
                           ) -> list[str]:
    """Apply pending migrations; return the versions applied by this call."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r["version"]: r["checksum"]
                   for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
        done: list[str] = []
        for migration in discover(directory):
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.path.name} was changed after it was applied; "
                        "restore it and add a new migration file instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version, migration.checksum,
                )
            log.info("migration applied", extra={"version": migration.version})
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
