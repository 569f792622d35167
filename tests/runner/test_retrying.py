"""The runner's retry helper: the policy each call site states is the one applied."""

from __future__ import annotations

import logging

import pytest

from runner_image.retrying import Backoff, with_retries

pytestmark = pytest.mark.unit


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


async def test_transient_errors_are_retried_with_doubling_pauses(
        caplog: pytest.LogCaptureFixture) -> None:
    action = Flaky([ConnectionError("a"), TimeoutError("b")])
    with caplog.at_level(logging.WARNING, logger="runner_image.retrying"):
        result = await with_retries("thing", lambda: action(), Backoff(3, 0.01),
                                    transient=(ConnectionError, TimeoutError))
    assert result == "done"  # the coroutine's value, awaited, not the coroutine
    assert action.calls == 3
    retries = [r for r in caplog.records if r.getMessage() == "thing failed, retrying"]
    assert [(r.attempt, r.retry_in) for r in retries] == [(1, 0.01), (2, 0.02)]  # type: ignore[attr-defined]


async def test_other_errors_are_raised_at_once() -> None:
    action = Flaky([ValueError("not transient")])
    with pytest.raises(ValueError, match="not transient"):
        await with_retries("thing", action, Backoff(5, 0.01), transient=(ConnectionError,))
    assert action.calls == 1


async def test_the_last_error_is_raised_when_the_attempts_are_spent() -> None:
    action = Flaky([ConnectionError(str(n)) for n in range(5)])
    with pytest.raises(ConnectionError, match=r"^2$"):
        await with_retries("thing", action, Backoff(3, 0), transient=(ConnectionError,))
    assert action.calls == 3
