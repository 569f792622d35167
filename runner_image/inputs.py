"""What a run checks before it touches anything, and the server's row read under its lock.

Each problem comes back as the outcome it ends the run with: what the operator can fix
(a playbook that is not there, missing provider credentials, a key that cannot decrypt the
root password) is a rejection that leaves the row as it was; a busy server or a database
that fails mid-read is a failure a retry can cure.
"""

from __future__ import annotations

import asyncpg
from pydantic import SecretStr

from contracts.messages import ProvisionerMessage
from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.db import (
    TRANSIENT_DB_ERRORS,
    MissingCredentialsKey,
    ServerBusy,
    ServerRecord,
    ServerStore,
    WrongCredentialsKey,
)
from runner_image.deadline import DeadlineReached, RunDeadline
from runner_image.play_env import mitogen_strategy_dir
from runner_image.redaction import Redactor
from runner_image.settings import RunnerSettings


def check_settings(settings: RunnerSettings, message: ProvisionerMessage) -> out.Outcome | None:
    """Configuration problems found before anything is touched."""
    if settings.play_mitogen:
        try:
            mitogen_strategy_dir()
        except ImportError as exc:
            return out.rejected(ErrorKind.CONFIG_ERROR,
                                f"PLAY_MITOGEN is true but Mitogen cannot be imported "
                                f"({exc}); install the runner's dependencies or set "
                                "PLAY_MITOGEN=false")
    for playbook in settings.playbooks_for(message.is_recovery):
        if not playbook.is_file():
            return out.rejected(ErrorKind.CONFIG_ERROR,
                                f"playbook {playbook} does not exist; check "
                                "PLAY_PROJECT_DIR / SETUP_PLAYBOOK / RECOVERY_PLAYBOOKS")
    if message.force_reinstall:
        missing = [name for name, value in (
            ("PROVIDER_API_USERNAME", settings.provider_api_username),
            ("PROVIDER_API_PASSWORD", settings.provider_api_password)) if value is None]
        if missing:
            return out.rejected(ErrorKind.CONFIG_ERROR,
                                f"force_reinstall needs {' and '.join(missing)}")
    return None


def check_server(server: ServerRecord, message: ProvisionerMessage) -> out.Outcome | None:
    """Problems with the server's row, read with its lock held."""
    if message.force_reinstall and not server.provider_server_id:
        return out.rejected(ErrorKind.CONFIG_ERROR,
                            f"server {server.handle} has no provider_server_id; "
                            "set it with register-server --provider-server-id")
    return None


async def lock_and_read(store: ServerStore, message: ProvisionerMessage, lock_timeout: float,
                        deadline: RunDeadline, redact: Redactor
                        ) -> tuple[ServerRecord, SecretStr | None] | out.Outcome:
    """The server's row and root password, read with its lock held; or why not."""
    handle = message.server_handle
    # Lock, then read: a run that waited while another (a reinstall) held the server
    # must see what that run left (its new host key, its status), not what was before.
    try:
        await store.lock(handle, deadline.cap(lock_timeout))
    except ServerBusy as exc:
        if deadline.capped(lock_timeout):
            raise DeadlineReached("the wait for the server's lock",
                                  f"{exc}; {deadline.exhausted('the lock wait')}") from None
        return out.failed(ErrorKind.SERVER_BUSY, str(exc), server_status=None)
    server = await store.load(handle)
    if server is None:
        return out.failed(ErrorKind.UNKNOWN_SERVER,
                          f"server {handle} is not in the servers table; register it "
                          "first (python -m runner_image register-server)", server_status=None)
    problem = check_server(server, message)
    if problem:
        return problem
    if not server.has_password:
        return server, None
    password = await read_password(store, handle)
    if isinstance(password, out.Outcome):
        return password
    if password is not None:
        redact.add(password.get_secret_value())
    return server, password


async def read_password(store: ServerStore, handle: str) -> SecretStr | out.Outcome | None:
    """The server's decrypted root password, or the outcome of a read that failed."""
    try:
        return await store.root_password(handle)
    except MissingCredentialsKey as exc:
        return out.rejected(ErrorKind.CONFIG_ERROR, str(exc))
    except WrongCredentialsKey:
        return out.rejected(ErrorKind.CONFIG_ERROR,
                            f"the root password of {handle} cannot be decrypted with "
                            "CREDENTIALS_KEY; set the key it was stored with")
    except (asyncpg.PostgresError, *TRANSIENT_DB_ERRORS) as exc:
        return out.failed(ErrorKind.DATABASE_UNAVAILABLE,
                          f"reading the root password of {handle} failed: "
                          f"{type(exc).__name__}: {exc}", server_status=None)
