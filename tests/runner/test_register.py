"""``register-server`` (runner_image.register), on a real PostgreSQL: the password only from
the environment and stored encrypted, bad values refused."""

from __future__ import annotations

import asyncpg
import pytest

from tests.runner.conftest import (
    CREDENTIALS_KEY,
    Runner,
    run_cli,
    server_row,
    unique_handle,
)


async def test_register_server_encrypts_the_password(runner: Runner, db) -> None:
    handle = unique_handle("reg")
    runner.register(handle, "10.0.0.5", 2222, password="S3cret-root-pw")
    row = await server_row(db, handle)
    assert (row["address"], row["ssh_port"], row["ssh_user"], row["status"]) == (
        "10.0.0.5", 2222, "root", "NEW")
    assert b"S3cret-root-pw" not in bytes(row["root_password_enc"])
    plain = await db.fetchval("SELECT pgp_sym_decrypt(root_password_enc, $2) FROM servers "
                              "WHERE handle = $1", handle, CREDENTIALS_KEY)
    assert plain == "S3cret-root-pw"
    with pytest.raises(asyncpg.PostgresError):
        await db.fetchval("SELECT pgp_sym_decrypt(root_password_enc, 'wrong') FROM servers "
                          "WHERE handle = $1", handle)

    # An update without a password keeps it; an address change forgets the host key.
    await db.execute("UPDATE servers SET host_key = 'ssh-ed25519 AAAA' WHERE handle = $1", handle)
    runner.register(handle, "10.0.0.5", 2222, user="admin")
    row = await server_row(db, handle)
    assert row["ssh_user"] == "admin" and row["root_password_enc"] is not None
    assert row["host_key"] == "ssh-ed25519 AAAA"
    runner.register(handle, "10.0.0.6", 2222, user="admin")
    assert (await server_row(db, handle))["host_key"] is None
    await db.execute("UPDATE servers SET host_key = 'ssh-ed25519 AAAA' WHERE handle = $1", handle)
    runner.register(handle, "10.0.0.6", 2222, extra=("--forget-host-key", "--clear-password"))
    row = await server_row(db, handle)
    assert row["host_key"] is None and row["root_password_enc"] is None



def test_register_server_takes_no_password_argument(runner: Runner) -> None:
    done = run_cli(["register-server", "--handle", "x", "--address", "a",
                    "--password", "oops"], runner.environment(None))
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr



def test_register_server_rejects_bad_values(runner: Runner) -> None:
    done = run_cli(["register-server", "--handle", "bad handle!", "--address", "a"],
                   runner.environment(None))
    assert done.returncode == 13 and "servers_handle_check" in done.stderr
