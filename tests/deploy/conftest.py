"""Session fixtures: the two images, built (or reused) once per test session."""

from __future__ import annotations

import pytest

from tests.support.images import Image, ensure_image


def _report(image: Image) -> None:
    how = "reused" if image.build_seconds is None else f"built in {image.build_seconds:.0f} s"
    print(f"\n{image.ref}: {how}, {image.size_bytes / 1e6:.1f} MB")


@pytest.fixture(scope="session")
def dispatcher_image() -> Image:
    image = ensure_image("dispatcher")
    _report(image)
    return image


@pytest.fixture(scope="session")
def runner_image() -> Image:
    image = ensure_image("runner")
    _report(image)
    return image
