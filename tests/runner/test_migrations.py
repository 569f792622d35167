"""Migrations (runner_image.migrations and ``migrate``), on a real PostgreSQL: idempotent,
safe when run concurrently, in order, refusing changed ones."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import asyncpg
import pytest

from runner_image.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations
from tests.runner.conftest import (
    REPO,
    RunnerDb,
    base_process_env,
    db_env,
    run_cli,
)
from tests.support.services import PostgresServer


async def test_migrate_is_idempotent_and_recorded(runner_db: RunnerDb, db) -> None:
    again = run_cli(["migrate"], {**base_process_env(), **db_env(runner_db)})
    assert again.returncode == 0, again.stderr
    assert '"applied": []' in again.stderr
    rows = await db.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]



async def test_concurrent_migrate_on_a_fresh_database(pg_srv: PostgresServer) -> None:
    admin = await asyncpg.connect(pg_srv.dsn(), password=pg_srv.password)
    await admin.execute("DROP DATABASE IF EXISTS migrate_race")
    await admin.execute("CREATE DATABASE migrate_race")
    try:
        env = {**base_process_env(), "DATABASE_URL": pg_srv.dsn("migrate_race"),
               "DATABASE_PASSWORD": pg_srv.password}
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner_image", "migrate", env=env, cwd=REPO,
            stderr=asyncio.subprocess.PIPE) for _ in range(2)]
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err
        conn = await asyncpg.connect(pg_srv.dsn("migrate_race"), password=pg_srv.password)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(
            list(MIGRATIONS_DIR.glob("*.sql")))
        await conn.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS migrate_race WITH (FORCE)")
        await admin.close()



async def test_new_migrations_apply_in_order_and_changed_ones_are_refused(
        db, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9001_probe.sql").write_text("CREATE TABLE migration_probe (id int);")
    (tmp_path / "9002_probe.sql").write_text("INSERT INTO migration_probe VALUES (1);")
    try:
        assert await apply_migrations(db, tmp_path) == ["9001_probe", "9002_probe"]
        assert await db.fetchval("SELECT count(*) FROM migration_probe") == 1
        assert await apply_migrations(db, tmp_path) == []
        (tmp_path / "9001_probe.sql").write_text("CREATE TABLE migration_probe (id bigint);")
        with pytest.raises(MigrationError, match=r"9001_probe\.sql was changed"):
            await apply_migrations(db, tmp_path)
    finally:
        await db.execute("DROP TABLE IF EXISTS migration_probe")
        await db.execute("DELETE FROM schema_migrations WHERE version LIKE '9%_probe'")
