"""The runner's termination message: one line, bounded, secrets masked, never fatal."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runner_image import termination
from runner_image.redaction import MASK, Redactor
from runner_image.termination import (
    MAX_MESSAGE_BYTES,
    format_message,
    write_for_outcome,
    write_termination_message,
)
from tests.runner.conftest import REPO, Runner, message
from tests.support.services import free_port

SECRET = "hunter2-database-password-value"


def test_message_is_kind_colon_summary() -> None:
    assert format_message("ssh_unreachable", "web-7 did not answer on port 22",
                          Redactor()) == "ssh_unreachable: web-7 did not answer on port 22"


def test_secret_is_masked_and_newlines_collapsed() -> None:
    text = format_message("play_failed", f"task failed\n  stderr: {SECRET}\r\nend",
                          Redactor([SECRET]))
    assert SECRET not in text
    assert MASK in text
    assert "\n" not in text and "\r" not in text
    assert text == f"play_failed: task failed stderr: {MASK} end"


def test_multiline_secret_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAAB\n-----END KEY-----"
    text = format_message("internal", "echoed AAAAB3NzaC1yc2EAAAADAQABAAAB back",
                          Redactor([key]))
    assert "AAAAB3NzaC1yc2EAAAADAQABAAAB" not in text


def test_long_message_is_truncated_within_the_bound() -> None:
    text = format_message("play_failed", "é" * 5000, Redactor())
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    assert text.endswith("...")
    assert text.startswith("play_failed: é")


@given(kind=st.sampled_from(["play_failed", "ssh_unreachable", "config_error"]),
       summary=st.text(max_size=3000),
       limit=st.integers(min_value=8, max_value=2048))
def test_bounded_one_line_and_masked_for_any_text(kind: str, summary: str, limit: int) -> None:
    # The secret is embedded in arbitrary text: truncation may cut the text short, but
    # never leave a recognisable part of the secret that was not masked first.
    assume(SECRET[:12] not in summary)
    text = format_message(kind, f"{summary}{SECRET}{summary}", Redactor([SECRET]), limit=limit)
    assert len(text.encode("utf-8")) <= limit
    assert SECRET[:12] not in text
    assert "\n" not in text and "\r" not in text


def test_written_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert write_termination_message(path, "config_error", f"bad {SECRET}", Redactor([SECRET]))
    assert path.read_text() == f"config_error: bad {MASK}\n"


def test_absent_directory_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "termination-log"
    assert not write_termination_message(path, "internal", "x", Redactor())
    assert not path.parent.exists()


# Root writes into a read-only directory, and CI runs the suite as root: there the write
# is made by a process that drops to this account (scripts/install-deps.sh creates it).
UNPRIVILEGED_USER = "infra-unprivileged"
# Run as the unprivileged user once the modules are loaded (so the interpreter and the
# repository need not be readable to it): exit 0 if written, 3 if refused.
_WRITE_AS = """
import os, sys
from pathlib import Path
from runner_image.redaction import Redactor
from runner_image.termination import write_termination_message
os.setgroups([])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[2]))
assert os.geteuid() != 0
sys.exit(0 if write_termination_message(Path(sys.argv[1]), "internal", "x", Redactor()) else 3)
"""


def write_as_unprivileged(directory: Path) -> bool:
    """Whether the unprivileged user can write a termination message into ``directory``."""
    if os.geteuid() != 0:
        return write_termination_message(directory / "termination-log", "internal", "x",
                                         Redactor())
    account = pwd.getpwnam(UNPRIVILEGED_USER)
    os.chown(directory, account.pw_uid, account.pw_gid)
    done = subprocess.run([sys.executable, "-c", _WRITE_AS, str(directory / "termination-log"),
                           str(account.pw_uid), str(account.pw_gid)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)})
    assert done.returncode in (0, 3), done.stderr
    return done.returncode == 0


@pytest.fixture
def own_directory() -> Iterator[Path]:
    """A directory any user can reach (the session's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="term-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_unwritable_file_is_tolerated(own_directory: Path) -> None:
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            pytest.skip(f"run as root without the user {UNPRIVILEGED_USER}, which "
                        "scripts/install-deps.sh creates: root would write into the read-only "
                        "directory, so the check cannot be made")
    own_directory.chmod(0o700)
    assert write_as_unprivileged(own_directory)  # the same user can write where allowed
    (own_directory / "termination-log").unlink()
    own_directory.chmod(0o500)
    assert not write_as_unprivileged(own_directory)
    assert not (own_directory / "termination-log").exists()


def test_outcomes_map_to_messages(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert not write_for_outcome(None, None, 0, Redactor(), path)  # success: no message
    assert not path.exists()
    assert write_for_outcome("ssh_unreachable", "port 22 closed", 11, Redactor(), path)
    assert path.read_text() == "ssh_unreachable: port 22 closed\n"
    assert write_for_outcome("play_failed", "task x failed", 14, Redactor(), path)
    assert path.read_text().startswith("could_not_report: no result was published; the run "
                                       "ended with play_failed: task x failed")


# ---- wired into the runner: the real process, with its settings ----

async def test_the_runner_writes_its_termination_message(runner: Runner,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    msg = message("no-such-server")
    res = runner.run(msg, TERMINATION_MESSAGE_PATH=str(path))
    assert res.rc == 10, res.explain
    text = path.read_text()
    assert text.startswith("unknown_server: ") and "no-such-server" in text
    assert text.count("\n") == 1
    # Outside a pod the directory may be missing: the run's outcome is unchanged.
    res = runner.run(message("no-such-server-2"),
                     TERMINATION_MESSAGE_PATH=str(tmp_path / "missing" / "t"))
    assert res.rc == 10 and not (tmp_path / "missing").exists()


async def test_an_invalid_message_and_an_unreported_run_say_so(runner: Runner,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    res = runner.run({"server_handle": "x", "request_id": "r-bad", "bogus": 1},
                     TERMINATION_MESSAGE_PATH=str(path))
    assert res.rc == 13, res.explain
    assert path.read_text().startswith("invalid_message: ")
    res = runner.run(message("no-such-server"), TERMINATION_MESSAGE_PATH=str(path),
                     REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_PASSWORD="",
                     REPORT_ATTEMPTS="2", REPORT_BACKOFF_BASE="0.1")
    assert res.rc == 14, res.explain
    assert path.read_text().startswith("could_not_report: ")


def test_the_default_path_is_used_only_where_the_kubelet_mounted_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(termination.PATH_VARIABLE, raising=False)
    monkeypatch.setattr(termination, "DEFAULT_TERMINATION_LOG", tmp_path / "termination-log")
    assert termination.configured_path() is None  # not in a pod: nothing is created
    assert not termination.write_for_outcome("internal", "x", 10, Redactor())
    assert not (tmp_path / "termination-log").exists()
    (tmp_path / "termination-log").write_text("")  # what the kubelet mounts
    assert termination.write_for_outcome("internal", "x", 10, Redactor())
    assert (tmp_path / "termination-log").read_text() == "internal: x\n"
    monkeypatch.setenv(termination.PATH_VARIABLE, str(tmp_path / "other"))
    assert termination.configured_path() == tmp_path / "other"
