"""Redis connection settings and client construction, shared by dispatcher and runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.keys import Keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis


class RedisSettings(BaseSettings):
    """``REDIS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore")

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL without a password (put it in REDIS_PASSWORD)",
    )
    password: SecretStr | None = Field(default=None, description="Redis password (secret)")
    key_prefix: str = Field(default="provisioner", description="Prefix of every key")
    socket_timeout: float = Field(default=5.0, gt=0, description="Seconds per Redis command")

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, url: str) -> str:
        if "@" in url.split("//", 1)[-1].split("/", 1)[0]:
            raise ValueError("REDIS_URL must not carry credentials; set REDIS_PASSWORD instead")
        return url

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)


def create_redis(settings: RedisSettings, *, blocking_timeout: float = 0.0) -> aioredis.Redis:
    """A client that reconnects with exponential backoff on connection errors.

    ``blocking_timeout`` extends the socket timeout for clients that issue blocking pops.
    """
    # Imported here: the runner loads settings long before it talks to Redis (at the end).
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return aioredis.Redis.from_url(
        settings.url,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=settings.socket_timeout + blocking_timeout,
        socket_connect_timeout=settings.socket_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
