"""The runner's configuration: environment variables only (see README.md for the table).

Secrets are ``SecretStr`` and are removed from the process environment once read, so no
child process (ssh, ansible-playbook) inherits them and ansible-runner's artifacts, which
record the child environment, never contain them.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from runner_image.deploy_key import USER_PATTERN, InvalidPublicKey, parse_public_key
from runner_image.environ import wipe_initial_environment

PACKAGE_DIR = Path(__file__).resolve().parent
IMAGE_PLAY_PROJECT_DIR = Path("/opt/infra-service/ansible")


def _default_play_project_dir() -> Path:
    """``ansible/`` of a source checkout, else where the runner image puts it (beside an
    installed package, ``ansible`` would be ansible-core's own package)."""
    beside = PACKAGE_DIR.parent / "ansible"
    return beside if (beside / "playbooks").is_dir() else IMAGE_PLAY_PROJECT_DIR


DEFAULT_PLAY_PROJECT_DIR = _default_play_project_dir()
MAX_SCRATCH_PATH = 37
# Docker first: pruning images and build cache needs a daemon that answers.
DEFAULT_RECOVERY_PLAYBOOKS = ["playbooks/recovery_docker.yml", "playbooks/recovery_disk_space.yml"]

# Every variable that may hold a secret; removed from os.environ after loading.
SECRET_VARIABLES = (
    "DATABASE_PASSWORD",
    "CREDENTIALS_KEY",
    "SSH_PRIVATE_KEY",
    "PROVIDER_API_USERNAME",
    "PROVIDER_API_PASSWORD",
    "REDIS_PASSWORD",
    "SERVER_ROOT_PASSWORD",
)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(Exception):
    """A missing or invalid setting; the message names variables, never their values."""


def _no_credentials_in_url(url: str, variable: str) -> str:
    netloc = url.split("//", 1)[-1].split("/", 1)[0]
    if "@" in netloc and ":" in netloc.rsplit("@", 1)[0]:
        raise ValueError(f"{variable} must not carry a password; set it in the *_PASSWORD variable")
    return url


class DatabaseSettings(BaseSettings):
    """PostgreSQL access (the source of truth)."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = Field(
        description="postgresql://USER@HOST:PORT/DB, without password (required)"
    )
    database_password: SecretStr | None = Field(default=None, description="DB password (secret)")
    database_connect_timeout: float = Field(default=10.0, gt=0, description="Seconds per connect")
    credentials_key: SecretStr | None = Field(
        default=None,
        description="Symmetric key for pgcrypto-encrypted root passwords (secret); "
        "required when a server has a password",
    )

    @field_validator("database_url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return _no_credentials_in_url(url, "DATABASE_URL")


class RunnerSettings(BaseSettings):
    """Everything one run needs besides the database and Redis."""

    model_config = SettingsConfigDict(extra="ignore")

    ssh_private_key: SecretStr = Field(
        description="The provisioner's own OpenSSH private key, unencrypted (secret, required)"
    )
    orchestrator_ssh_public_key: str = Field(
        description="Public key installed in the deploy user's authorized_keys (required)"
    )
    deploy_key_user: str = Field(default="root", pattern=USER_PATTERN,
                                 description="User whose authorized_keys receives the deploy key")
    ssh_attempts: int = Field(default=3, ge=1, le=10, description="SSH check attempts")
    ssh_backoff_base: float = Field(
        default=2.0, ge=0, description="Seconds before the 2nd attempt; doubles each time"
    )
    ssh_connect_timeout: float = Field(default=10.0, gt=0, description="Seconds per SSH connect")
    ssh_command_timeout: float = Field(
        default=60.0, gt=0, description="Seconds for one SSH check or key installation command"
    )
    play_timeout: float = Field(
        default=1500.0, gt=0,
        description="Seconds for all plays of a run (also bounded by the run's deadline)",
    )
    job_active_deadline_seconds: float | None = Field(
        default=None, gt=0,
        description="Set by the dispatcher: the Job's activeDeadlineSeconds; the run's single "
        "deadline is the pod's start plus this, or JOB_DEADLINE_AT if that is earlier",
    )
    job_deadline_at: str | None = Field(
        default=None,
        description="Set by the dispatcher (downward API, annotation "
        "infra-service.io/deadline-at): when Kubernetes' deadline runs out, RFC 3339 UTC; "
        "missing or invalid: the deadline counts from the runner's own start (a warning)",
    )
    report_reserve_seconds: float = Field(
        default=30.0, ge=1,
        description="Seconds kept back from the deadline for writing the status and the result",
    )
    play_vars: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra play variables as a JSON object (public values only, e.g. "
        "firewall ports or docker_storage_driver); the runner's own infra_* variables win",
    )
    play_env_passthrough: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated names of the runner's own (non-secret) environment "
        "variables the plays may read; the plays get no other variable of the runner's",
    )
    play_project_dir: Path = Field(
        default=DEFAULT_PLAY_PROJECT_DIR, description="Ansible project directory (has ansible.cfg)"
    )
    setup_playbook: str = Field(
        default="playbooks/setup_server.yml", description="Setup play, relative to the project dir"
    )
    recovery_playbooks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RECOVERY_PLAYBOOKS),
        description="Comma-separated recovery plays, run in order",
    )
    play_mitogen: bool = Field(
        default=True,
        description="Run plays with Mitogen's linear strategy (one persistent Python on the "
        "server instead of one per task; about 0.6x the wall time); false uses Ansible's own "
        "linear strategy, e.g. for a module Mitogen does not support",
    )
    target_python: str = Field(
        default="/usr/bin/python3",
        description="Python on the server (ansible_python_interpreter); 'auto_silent' discovers it",
    )
    runner_scratch_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()),
        description="Writable directory for the private data dir (default: TMPDIR or /tmp)",
    )
    server_lock_timeout: float = Field(
        default=30.0, ge=0, description="Seconds to wait for another run on the same server"
    )
    report_attempts: int = Field(default=5, ge=1, description="Attempts to write DB status/result")
    report_backoff_base: float = Field(default=1.0, ge=0, description="Seconds, doubles each time")
    provider_api_url: str = Field(
        default="https://billing.time4vps.com/api/", description="Time4VPS API base URL"
    )
    provider_api_username: SecretStr | None = Field(default=None, description="API user (secret)")
    provider_api_password: SecretStr | None = Field(default=None,
                                                    description="API password (secret)")
    provider_reinstall_os: str = Field(default="debian-12", description="OS code for reinstalls")
    provider_request_timeout: float = Field(default=30.0, gt=0, description="Seconds per request")
    provider_poll_interval: float = Field(default=10.0, gt=0, description="Seconds between polls")
    provider_task_timeout: float = Field(
        default=900.0, gt=0, description="Seconds for the reinstall task to complete"
    )
    reinstall_ssh_timeout: float = Field(
        default=600.0, gt=0, description="Seconds for SSH to come back after a reinstall"
    )
    log_level: str = Field(default="INFO", description="Log level")

    @field_validator("orchestrator_ssh_public_key")
    @classmethod
    def _deploy_key(cls, value: str) -> str:
        try:
            # The key material itself is decoded when the run starts (check_key_material).
            return parse_public_key(value, decode=False).line
        except InvalidPublicKey as exc:
            raise ValueError(str(exc)) from None

    @field_validator("ssh_private_key")
    @classmethod
    def _private_key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if "PRIVATE KEY-----" not in text:
            raise ValueError("must be an unencrypted private key in OpenSSH/PEM format")
        if not text.endswith("\n"):
            return SecretStr(text + "\n")
        return value

    @field_validator("play_env_passthrough")
    @classmethod
    def _passthrough(cls, names: list[str]) -> list[str]:
        secret = sorted(set(names) & set(SECRET_VARIABLES))
        if secret:
            raise ValueError(f"{', '.join(secret)} hold secrets and are never passed to plays")
        return names

    @field_validator("recovery_playbooks", "play_env_passthrough", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("runner_scratch_dir")
    @classmethod
    def _scratch(cls, path: Path) -> Path:
        # SSH control sockets live at DIR/rXXXXXXXX/c/<40 hex>.<16 chars while created>, and
        # a Unix socket path has at most 107 bytes.
        if len(str(path)) > MAX_SCRATCH_PATH:
            raise ValueError(f"path is too long for SSH control sockets "
                             f"(at most {MAX_SCRATCH_PATH} characters)")
        return path

    @field_validator("play_vars")
    @classmethod
    def _play_vars(cls, value: dict[str, Any]) -> dict[str, Any]:
        port = value.get("ssh_port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise ValueError("ssh_port (a requested sshd port move) must be an integer "
                             "between 1 and 65535")
        return value

    @property
    def requested_ssh_port(self) -> int | None:
        """The port sshd is asked to move to (``ssh_port`` in PLAY_VARS), if any."""
        port = self.play_vars.get("ssh_port")
        return port if isinstance(port, int) else None

    def worst_case(self, reinstall: bool) -> list[tuple[str, float]]:
        """The longest each phase of a run may take, named by the settings that bound it."""
        ssh_check = (self.ssh_attempts * self.ssh_command_timeout
                     + self.ssh_backoff_base * (2 ** (self.ssh_attempts - 1) - 1))
        parts = [("SERVER_LOCK_TIMEOUT", self.server_lock_timeout)]
        if reinstall:
            parts += [("PROVIDER_REQUEST_TIMEOUT", self.provider_request_timeout),
                      ("PROVIDER_TASK_TIMEOUT", self.provider_task_timeout),
                      ("REINSTALL_SSH_TIMEOUT", self.reinstall_ssh_timeout)]
        else:
            parts.append(("SSH_ATTEMPTS x SSH_COMMAND_TIMEOUT + backoff", ssh_check))
        parts += [("2 x SSH_COMMAND_TIMEOUT (keys)", 2 * self.ssh_command_timeout),
                  ("PLAY_TIMEOUT", self.play_timeout),
                  ("REPORT_RESERVE_SECONDS", self.report_reserve_seconds)]
        return parts

    def deadline_problem(self, reinstall: bool) -> str | None:
        """Why the phases of such a run cannot fit in JOB_ACTIVE_DEADLINE_SECONDS, or None."""
        if self.job_active_deadline_seconds is None:
            return None
        parts = self.worst_case(reinstall)
        total = sum(seconds for _, seconds in parts)
        if total <= self.job_active_deadline_seconds:
            return None
        listed = " + ".join(f"{name} ({seconds:g}s)" for name, seconds in parts)
        kind = "a reinstall" if reinstall else "a run"
        return (f"the phases of {kind} cannot fit in JOB_ACTIVE_DEADLINE_SECONDS="
                f"{self.job_active_deadline_seconds:g}s: {listed} = {total:g}s; lower these "
                "or raise the Job's activeDeadlineSeconds")

    def playbooks_for(self, recovery: bool) -> list[Path]:
        names = self.recovery_playbooks if recovery else [self.setup_playbook]
        return [self.play_project_dir / name for name in names]


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """Name each bad variable and why, without the (possibly secret) value."""
    parts = []
    for item in error.errors():
        variable = prefix + str(item["loc"][0]).upper() if item["loc"] else "settings"
        if item["type"] == "missing":
            parts.append(f"{variable} is not set")
        else:
            parts.append(f"{variable} is invalid: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([a-z0-9_]+)"')


def load(cls: type[SettingsT]) -> SettingsT:
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        # Raised for a value that is not valid JSON (PLAY_VARS, lists); its text may quote
        # the value's parse error, so only the variable is named.
        found = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        variable = found.group(1).upper() if found else "a setting"
        raise ConfigError(f"{variable} is invalid: not valid JSON (a JSON object is "
                          "expected)") from None


def scrub_secret_environment() -> None:
    """Remove secret variables so that no child process inherits them, and overwrite them
    in the process's initial environment block (``/proc/<pid>/environ``)."""
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    wipe_initial_environment(SECRET_VARIABLES)
