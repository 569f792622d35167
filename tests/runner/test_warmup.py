"""The imports the run needs later load in a background thread, without blocking the loop."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner_image.warmup import Warmup

pytestmark = pytest.mark.unit


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("warm_")]:
            del sys.modules[name]


def slow_module(directory: Path, name: str, seconds: float) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(f"""
        import threading, time
        time.sleep({seconds})
        loaded_by = threading.current_thread().name
    """))


async def test_modules_load_in_a_thread_while_the_loop_runs(modules: Path) -> None:
    slow_module(modules, "warm_a", 0.3)
    slow_module(modules, "warm_b", 0.0)
    warmup = Warmup("warm_a", "warm_b")
    warmup.start()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await warmup.wait()
    ticker.cancel()
    assert ticks >= 10  # the loop went on during the 0.3 s import
    assert sys.modules["warm_a"].loaded_by == "warmup"
    assert sys.modules["warm_b"].loaded_by == "warmup"
    assert threading.current_thread().name == "MainThread"


async def test_wait_starts_it_when_nobody_did(modules: Path) -> None:
    slow_module(modules, "warm_c", 0.0)
    warmup = Warmup("warm_c")
    await warmup.wait()
    assert "warm_c" in sys.modules
    await warmup.wait()  # a second wait returns at once


async def test_a_failing_import_surfaces_where_the_module_is_used(modules: Path) -> None:
    (modules / "warm_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    slow_module(modules, "warm_after", 0.0)
    warmup = Warmup("warm_missing", "warm_broken", "warm_after")
    await warmup.wait()
    assert "warm_after" in sys.modules  # the modules after a failing one still load
    with pytest.raises(ModuleNotFoundError):
        __import__("warm_missing")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        __import__("warm_broken")
