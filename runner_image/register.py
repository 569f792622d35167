"""``register-server``: add or update a server in the source of truth (operators, demo).

The root password is read from an environment variable (``--password-env``, default
SERVER_ROOT_PASSWORD), never from argv, and stored encrypted with CREDENTIALS_KEY.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import asyncpg

from runner_image.settings import ConfigError, DatabaseSettings

_UPSERT = """
INSERT INTO servers AS s (handle, provider, provider_server_id, address, ssh_port, ssh_user,
                          root_password_enc)
VALUES ($1, $2, $3, $4, $5, $6,
        CASE WHEN $7::text IS NULL THEN NULL ELSE pgp_sym_encrypt($7::text, $8::text) END)
ON CONFLICT (handle) DO UPDATE SET
    provider = EXCLUDED.provider,
    provider_server_id = COALESCE(EXCLUDED.provider_server_id, s.provider_server_id),
    address = EXCLUDED.address,
    ssh_port = EXCLUDED.ssh_port,
    ssh_user = EXCLUDED.ssh_user,
    root_password_enc = CASE WHEN $9 THEN NULL
                             ELSE COALESCE(EXCLUDED.root_password_enc, s.root_password_enc) END,
    host_key = CASE WHEN $10 OR s.address <> EXCLUDED.address OR s.ssh_port <> EXCLUDED.ssh_port
                    THEN NULL ELSE s.host_key END,
    host_key_recorded_at = CASE WHEN $10 OR s.address <> EXCLUDED.address
                                     OR s.ssh_port <> EXCLUDED.ssh_port
                                THEN NULL ELSE s.host_key_recorded_at END,
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""


@dataclass(frozen=True)
class Registration:
    handle: str
    address: str
    port: int = 22
    user: str = "root"
    provider: str = "time4vps"
    provider_server_id: str | None = None
    password_env: str = "SERVER_ROOT_PASSWORD"  # noqa: S105 - a variable name
    clear_password: bool = False
    forget_host_key: bool = False


async def register(conn: asyncpg.Connection, settings: DatabaseSettings, reg: Registration
                   ) -> bool:
    """Insert or update; True if the server was new."""
    password = os.environ.get(reg.password_env) or None
    key = settings.credentials_key.get_secret_value() if settings.credentials_key else None
    if password is not None and key is None:
        raise ConfigError(f"{reg.password_env} is set but CREDENTIALS_KEY is not; the password "
                          "is stored encrypted and needs the key")
    try:
        return bool(await conn.fetchval(
            _UPSERT, reg.handle, reg.provider, reg.provider_server_id, reg.address, reg.port,
            reg.user, password, key, reg.clear_password, reg.forget_host_key,
        ))
    except asyncpg.CheckViolationError as exc:
        raise ConfigError(f"invalid server values: {exc.constraint_name}") from None
