"""The command-line watch used by the secret checks can see what it looks for."""

from __future__ import annotations

import subprocess

from tests.support.playrun import CommandLineWatch


def test_the_watch_sees_a_secret_on_a_command_line() -> None:
    secret = "watch-self-test-7f3a"
    with CommandLineWatch(secret) as watch:
        subprocess.run(["sh", "-c", "sleep 0.5", secret], check=True)
    assert any(secret in hit for hit in watch.hits)
    with CommandLineWatch("never-used-anywhere-91c2") as quiet:
        subprocess.run(["sh", "-c", "sleep 0.3"], check=True)
    assert quiet.hits == [] and quiet.samples > 2
