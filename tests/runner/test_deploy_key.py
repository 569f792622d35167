"""Public key validation (no server needed); installation is proven on hosts elsewhere."""

from __future__ import annotations

import pytest

from runner_image.deploy_key import InvalidPublicKey, parse_public_key
from tests.runner.conftest import Keypair


def test_valid_key_is_normalised(orchestrator_key: Keypair) -> None:
    key = parse_public_key("  " + orchestrator_key.public + "\n")
    assert key.line == orchestrator_key.public
    assert key.key_type == "ssh-ed25519" and key.comment == "orchestrator"


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("ssh-ed25519 AAAA\nssh-ed25519 BBBB", "exactly one line"),
    ("ssh-ed25519 AAAA\rssh-rsa BBBB", "exactly one line"),
    ("ssh-foo AAAA", "unknown key type"),
    ('from="10.0.0.1" ssh-ed25519 AAAA', "options"),
    ("restrict ssh-ed25519 AAAA", "options"),
    ("ssh-ed25519", "no base64 body"),
    ("ssh-ed25519 %%%%", "not valid base64"),
    ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "does not match"),
    ("-----BEGIN OPENSSH " "PRIVATE KEY-----", "private key"),
])
def test_bad_keys_are_rejected_without_echoing_them(text: str, reason: str) -> None:
    with pytest.raises(InvalidPublicKey, match=reason) as caught:
        parse_public_key(text)
    body = text.split()[1] if len(text.split()) > 1 else None
    if body and len(body) > 4:
        assert body not in str(caught.value)


def test_comment_with_control_characters_is_rejected(orchestrator_key: Keypair) -> None:
    with pytest.raises(InvalidPublicKey, match="non-printable"):
        parse_public_key(orchestrator_key.public + " bell\x07")
