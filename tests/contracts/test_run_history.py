"""The run history's message rule (contracts/run_history.py), shared by the runner and the
dispatcher: secret-looking text masked, then bounded."""

from __future__ import annotations

import pytest

from contracts.run_history import MASK, MESSAGE_LIMIT, Phase, bounded_message, scrub

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "secret"), [
    ("login failed: password=hunter2 for root", "hunter2"),
    ('env DATABASE_PASSWORD: "pg-s3cret" rejected', "pg-s3cret"),
    ("api_key=AKIA0123456789 invalid", "AKIA0123456789"),
    ("GET https://user:url-pw@provider.example/api failed", "url-pw"),
    ("header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y refused", "eyJhbGciOiJIUzI1NiJ9"),
    ("key -----BEGIN OPENSSH " "PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE "
     "KEY----- was shown", "b3BlbnNzaC1rZXk"),
])
def test_secret_looking_text_is_masked(text: str, secret: str) -> None:
    clean = scrub(text)
    assert secret not in clean and MASK in clean


def test_ordinary_text_is_kept() -> None:
    text = "OOMKilled: container runner exceeded its memory limit (256Mi) on node-3"
    assert scrub(text) == text


def test_the_message_is_bounded_after_the_scrub() -> None:
    # A secret across the cut would leave half of it unmasked if the cut came first.
    text = "x" * (MESSAGE_LIMIT - 10) + " token=abcdefghijklmnopqrstuvwxyz"
    bounded = bounded_message(text)
    assert bounded is not None and len(bounded) <= MESSAGE_LIMIT
    assert bounded.endswith(f" token={MASK}")
    assert bounded_message(None) is None


def test_the_phases_are_in_run_order() -> None:
    assert [p.value for p in Phase] == ["lock", "ssh_check", "reinstall", "keys", "play",
                                        "report"]
