"""What a failed ssh invocation means (runner_image.ssh.classify), from OpenSSH's and
sshpass's own words and exit codes, without a host."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_image.ssh import SshErrorKind, SshTarget, classify

pytestmark = pytest.mark.unit

TARGET = SshTarget(alias="web-7", address="192.0.2.7", port=2222, user="root")
NOISE = ("Warning: Permanently added '[192.0.2.7]:2222' (ED25519) to the list of known hosts.\n"
         "Authenticated to 192.0.2.7 ([192.0.2.7]:2222) using \"publickey\".\n")


@pytest.mark.parametrize(("rc", "stderr", "with_password", "kind"), [
    (255, "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n", False,
     SshErrorKind.HOST_KEY),
    (255, "Host key verification failed.\n", True, SshErrorKind.HOST_KEY),
    (255, "root@192.0.2.7: Permission denied (publickey).\n", False, SshErrorKind.AUTH),
    (255, "Received disconnect: Too many authentication failures\n", False, SshErrorKind.AUTH),
    (5, "", True, SshErrorKind.AUTH),  # sshpass: the password was refused
    (5, "", False, SshErrorKind.COMMAND),  # without sshpass, 5 is the remote command's
    (255, "ssh: connect to host 192.0.2.7 port 2222: Connection refused\n", False,
     SshErrorKind.UNREACHABLE),
    (255, "", False, SshErrorKind.UNREACHABLE),
    (3, "", True, SshErrorKind.UNREACHABLE),  # sshpass: general runtime error
    (6, "", True, SshErrorKind.UNREACHABLE),  # sshpass: host key unknown (accept-new off)
    (1, "sh: 1: nope: not found\n", False, SshErrorKind.COMMAND),
])
def test_classification(rc: int, stderr: str, with_password: bool, kind: SshErrorKind) -> None:
    assert classify(rc, stderr, with_password, TARGET).kind is kind


def test_the_host_key_message_says_what_to_do() -> None:
    error = classify(255, "Host key verification failed.", False, TARGET)
    assert "root@192.0.2.7:2222" in error.message
    assert "force_reinstall" in error.message and "--forget-host-key" in error.message


def test_a_refused_login_names_what_was_tried() -> None:
    assert "the provisioner key and the root password" in classify(
        5, "", True, TARGET).message
    assert "(the provisioner key tried)" in classify(
        255, "Permission denied (publickey).", False, TARGET).message


def test_the_message_is_the_last_line_that_is_not_ssh_chatter() -> None:
    error = classify(255, NOISE + "ssh: connect to host 192.0.2.7 port 2222: No route to host\n"
                     "Transferred: sent 0, received 0 bytes\n", False, TARGET)
    assert error.message == ("ssh to root@192.0.2.7:2222: ssh: connect to host 192.0.2.7 "
                             "port 2222: No route to host")
    assert classify(255, NOISE, False, TARGET).message.endswith("ssh failed without a message")


@given(rc=st.integers(-255, 255), stderr=st.text(max_size=500), with_password=st.booleans())
def test_any_failure_is_classified_and_names_the_target(rc: int, stderr: str,
                                                        with_password: bool) -> None:
    error = classify(rc, stderr, with_password, TARGET)
    assert error.kind in set(SshErrorKind)
    assert error.message and error.message == str(error)
    if error.kind is not SshErrorKind.COMMAND:
        assert "root@192.0.2.7:2222" in error.message
