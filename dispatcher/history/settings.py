"""Run history settings: the dispatcher's own database login and the retention.

The URL and password come from the environment only (the chart fills them from a Secret);
without ``DATABASE_URL`` the history is off and dispatching is unchanged.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class HistorySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISPATCHER_HISTORY_", extra="ignore",
                                      populate_by_name=True)

    database_url: SecretStr | None = Field(
        default=None, validation_alias="DATABASE_URL",
        description="PostgreSQL URL of the dispatcher's login role (a member of "
        "infra_service_dispatcher); unset: no run history is written")
    database_password: SecretStr | None = Field(
        default=None, validation_alias="DATABASE_PASSWORD",
        description="Password of that role, when the URL has none")
    retention_days: int = Field(
        default=90, ge=1, le=3650, description="Runs older than this (by queued time) are "
        "deleted by the dispatcher")
    prune_interval_seconds: float = Field(
        default=3600, gt=0, description="How often each replica deletes expired runs")
    prune_batch: int = Field(
        default=1000, ge=1, le=100000, description="Rows deleted per statement when pruning")
    write_timeout_seconds: float = Field(
        default=5, gt=0, description="Bound of one history write (connection included)")
    max_pending_writes: int = Field(
        default=1000, ge=1, description="History writes waiting for the database; beyond "
        "this a write is dropped with a warning")

    @property
    def enabled(self) -> bool:
        return self.database_url is not None and bool(self.database_url.get_secret_value())

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: without any password it may carry."""
        return safe_url(self.database_url.get_secret_value() if self.database_url else "")


def safe_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "DATABASE_URL (unparsable)"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, parts.query, ""))
