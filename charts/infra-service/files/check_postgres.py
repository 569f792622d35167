# helm test: PostgreSQL answers with the configured URL and password, and the schema the
# migration hook applies is there. Runs in the runner image (asyncpg); prints one line.
import asyncio
import os
import sys

import asyncpg


async def main() -> int:
    url = os.environ["DATABASE_URL"]
    timeout = float(os.environ.get("DATABASE_CONNECT_TIMEOUT", "10"))
    try:
        conn = await asyncpg.connect(url, password=os.environ.get("DATABASE_PASSWORD") or None,
                                     timeout=timeout)
    except Exception as exc:  # one line naming what failed, never a traceback
        print(f"FAIL: PostgreSQL at {url} did not accept the login: {type(exc).__name__}: {exc}."
              " Check database.url and the Secret key of database.password.")
        return 1
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        print(f"FAIL: PostgreSQL at {url} answers but has no schema_migrations table:"
              " the migration hook has not run (migrations.enabled).")
        return 1
    finally:
        await conn.close()
    print(f"OK: PostgreSQL at {url} answers; {applied} migrations applied")
    return 0


sys.exit(asyncio.run(main()))
