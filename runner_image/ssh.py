"""SSH to the server with the system OpenSSH client, configured privately for one run.

The same client, config file, known_hosts and control socket serve the runner's own
commands (the check, the key installation) and Ansible, so the check proves exactly what
Ansible will use, and Ansible reuses the connection the check opened.

Host keys: with a recorded key, known_hosts holds only that key (under a ``HostKeyAlias``
equal to the server handle) and checking is strict; without one (first contact or right
after a reinstall) the first key seen is accepted and read back to be recorded.
Passwords reach ssh through ``sshpass -d FD`` (a pipe), never through argv or environment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import SecretStr


class SshErrorKind(StrEnum):
    """How an ssh invocation failed; the run maps each to a result kind and a retry choice."""

    UNREACHABLE = "unreachable"  # no answer, refused, timed out: worth another attempt
    AUTH = "auth"  # the login was refused: repeating it cannot succeed
    HOST_KEY = "host_key"  # the host key differs from the recorded one
    COMMAND = "command"  # connected, but the remote command failed


class SshError(Exception):
    def __init__(self, kind: SshErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class SshTarget:
    alias: str
    address: str
    port: int
    user: str


@dataclass
class SshResult:
    stdout: str
    stderr: str
    auth_method: str | None


def fingerprint(host_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of a host key given as ``type base64``."""
    blob = base64.b64decode(host_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class SshClient:
    """Owns the private ssh config, known_hosts and control socket directory of a run."""

    def __init__(self, directory: Path, agent_socket: Path, target: SshTarget,
                 connect_timeout: float) -> None:
        self.target = target
        self.config_file = directory / "ssh_config"
        self.known_hosts = directory / "known_hosts"
        self.control_dir = directory / "c"
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        self.config_file.write_text(
            "Host *\n"
            f"  HostKeyAlias {target.alias}\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  UpdateHostKeys no\n"
            "  CheckHostIP no\n"
            f"  IdentityAgent {agent_socket}\n"
            "  IdentitiesOnly no\n"
            f"  ConnectTimeout {max(1, round(connect_timeout))}\n"
            "  ServerAliveInterval 15\n"
            "  ServerAliveCountMax 4\n"
            "  ControlMaster auto\n"
            "  ControlPersist 60s\n"
            f"  ControlPath {self.control_dir}/%C\n"
        )
        self.known_hosts.write_text("")

    # -- host keys ---------------------------------------------------------------------
    def trust(self, host_key: str | None) -> None:
        """Trust exactly ``host_key`` (``type base64``), or nothing (accept the first seen)."""
        self.known_hosts.write_text(f"{self.target.alias} {host_key}\n" if host_key else "")

    def seen_host_key(self) -> str | None:
        for line in self.known_hosts.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == self.target.alias:
                return f"{fields[1]} {fields[2]}"
        return None

    # -- commands ----------------------------------------------------------------------
    def _argv(self, remote: str, *, accept_new: bool, password: bool) -> list[str]:
        argv = ["ssh", "-F", str(self.config_file), "-o", "LogLevel=VERBOSE",
                "-o", f"StrictHostKeyChecking={'accept-new' if accept_new else 'yes'}"]
        if password:
            argv += ["-o", "BatchMode=no", "-o", "PreferredAuthentications=publickey,password",
                     "-o", "NumberOfPasswordPrompts=1", "-o", "KbdInteractiveAuthentication=no"]
        else:
            argv += ["-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey"]
        argv += ["-p", str(self.target.port), "-l", self.target.user, self.target.address, remote]
        return argv

    async def run(self, remote: str, *, stdin: str | None = None, password: SecretStr | None = None,
                  accept_new: bool = False, limit: float = 60.0) -> SshResult:
        argv = self._argv(remote, accept_new=accept_new, password=password is not None)
        pass_fds: tuple[int, ...] = ()
        read_fd = -1
        if password is not None:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, password.get_secret_value().encode() + b"\n")
            os.close(write_fd)
            argv = ["sshpass", "-d", str(read_fd), *argv]
            pass_fds = (read_fd,)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=pass_fds, start_new_session=True,
            )
        finally:
            if read_fd >= 0:
                os.close(read_fd)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), limit
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise SshError(SshErrorKind.UNREACHABLE, f"no SSH answer within {limit:g}s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if proc.returncode != 0:
            raise classify(proc.returncode or 0, stderr, password is not None, self.target)
        return SshResult(stdout, stderr, _auth_method(stderr))

    async def close(self) -> None:
        """Stop the control master(s) so no ssh process outlives the run."""
        for sock in list(self.control_dir.glob("*")):
            proc = await asyncio.create_subprocess_exec(
                "ssh", "-F", str(self.config_file), "-o", f"ControlPath={sock}", "-O", "exit",
                self.target.address, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _auth_method(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith("Authenticated to ") and ' using "' in line:
            return line.rsplit(' using "', 1)[1].split('"')[0]
    return None


def _last_error_line(stderr: str) -> str:
    noise = ("Warning: Permanently added", "Authenticated to", "Transferred:", "Bytes per second")
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.strip().startswith(noise)]
    return lines[-1] if lines else "ssh failed without a message"


def classify(rc: int, stderr: str, with_password: bool, target: SshTarget) -> SshError:
    """What a failed ssh invocation (exit code ``rc``) means, from OpenSSH's and sshpass's
    messages and codes: 255 is ssh's own failure, sshpass uses 1-6 for its own."""
    where = f"{target.user}@{target.address}:{target.port}"
    changed = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")
    if any(marker in stderr for marker in changed):
        return SshError(
            SshErrorKind.HOST_KEY,
            f"the SSH host key of {where} differs from the recorded one; if the server was "
            "reinstalled, run with force_reinstall or clear its host key "
            "(register-server --forget-host-key), otherwise treat it as a possible attack",
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr or (
            with_password and rc == 5):
        tried = ("the provisioner key and the root password" if with_password
                 else "the provisioner key")
        return SshError(
            SshErrorKind.AUTH,
            f"SSH login to {where} was refused ({tried} tried); check the credentials in the "
            "servers table and SSH_PRIVATE_KEY",
        )
    if rc == 255 or (with_password and rc in (1, 2, 3, 4, 6)):
        return SshError(SshErrorKind.UNREACHABLE, f"ssh to {where}: {_last_error_line(stderr)}")
    return SshError(SshErrorKind.COMMAND,
                    f"remote command failed with {rc}: {_last_error_line(stderr)}")
