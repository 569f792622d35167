"""Masking, then cutting: no part of a secret survives in an output tail, wherever the
cut falls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_image.play_events import mask_then_cut
from runner_image.redaction import Redactor

pytestmark = pytest.mark.unit

# Secrets of upper-case letters and digits, surrounding output of lower-case letters: any
# upper-case letter in a tail is a piece of a secret.
SECRET = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), min_size=8,
                 max_size=300)
OUTPUT = st.text(st.sampled_from("abcdefghij \n"), max_size=3000)


@given(secret=SECRET, before=OUTPUT, after=OUTPUT, limit=st.integers(1, 2000))
def test_no_piece_of_a_secret_survives_the_cut(secret: str, before: str, after: str,
                                               limit: int) -> None:
    tail = mask_then_cut(before + secret + after, Redactor([secret]), limit)
    assert len(tail) <= limit
    assert not any(ch.isupper() or ch.isdigit() for ch in tail), tail


@given(secret=SECRET, after=st.integers(0, 100), limit=st.integers(10, 400))
def test_a_secret_straddling_the_boundary(secret: str, after: int, limit: int) -> None:
    text = "x" * 5000 + secret + "y" * after
    tail = mask_then_cut(text, Redactor([secret]), limit)
    assert tail == ("x" * 5000 + "***" + "y" * after)[-limit:]
