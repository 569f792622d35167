"""Typing help for redis-py's asyncio client."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

T = TypeVar("T")


def aio(value: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types each command for both of its clients (``Awaitable[T] | T``); on the
    asyncio client the reply is always the awaitable. ``await aio(redis.hlen(key))``."""
    return cast("Awaitable[T]", value)
