"""What sshd really applies, per kind of user: Match blocks in drop-ins cannot turn password
logins back on, and the hardening beyond the defaults is in force without locking anyone out."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.ansible.conftest import CLOUD_INIT_DROPIN, Keys
from tests.support.hosts import Host, vps_host
from tests.support.playrun import Target, run_play, ssh_run

pytestmark = pytest.mark.hosts

TAGS = "deploy_key,admin_user,ssh"
VENDOR_DROPIN = "/etc/ssh/sshd_config.d/60-vendor.conf"
ORDINARY = "alice"
ORDINARY_PASSWORD = "alice-has-a-password"
# Match blocks that turn password logins back on: for one user, or for everyone.
TRAPS = {
    "match-user": f"Match User {ORDINARY}\n    PasswordAuthentication yes\n",
    "match-all": "Match all\n    KbdInteractiveAuthentication yes\n",
}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, ssh_keys: Keys) -> Iterator[Target]:
    with vps_host(privileged=False, name_prefix="infra-sshd") as host:
        host.authorize_key(ssh_keys.provisioner.public)
        host.exec(f"useradd -m -s /bin/sh {ORDINARY}")
        host.exec(f"echo '{ORDINARY}:{ORDINARY_PASSWORD}' | chpasswd")
        host.write_file(CLOUD_INIT_DROPIN, "PasswordAuthentication yes\n")
        host.exec("systemctl reload ssh")
        target = Target(host=host, workdir=tmp_path_factory.mktemp("sshd"), port=host.ssh_port,
                        key_file=ssh_keys.provisioner.path)
        target.trust_host_key()
        yield target


def play_vars(keys: Keys) -> dict[str, object]:
    return {"deploy_key_public_key": keys.orchestrator.public,
            "deploy_key_additional_public_keys": [keys.provisioner.public],
            "admin_user_authorized_keys": [keys.admin.public]}


def effective(host: Host, user: str, addr: str = "203.0.113.5") -> dict[str, str]:
    out = host.exec(f"sshd -T -C user={user},host=client.example,addr={addr}").stdout
    return {k: v for k, _, v in (line.partition(" ") for line in out.splitlines())}


@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_a_match_block_that_reenables_passwords_stops_the_play(
        host: Target, ssh_keys: Keys, trap: str) -> None:
    box = host.host
    box.write_file(VENDOR_DROPIN, TRAPS[trap])
    try:
        before = box.exec("sha256sum /etc/ssh/sshd_config").stdout
        pid_before = box.exec("systemctl show -p MainPID --value ssh").stdout
        result = run_play("setup_server.yml", host, play_vars(ssh_keys), tags=TAGS)
        assert not result.ok
        message = result.failures[-1]["msg"]
        assert VENDOR_DROPIN in message, message
        assert "sshd was not reloaded" in message
        # Nothing of sshd changed: same file, same running daemon (a reload keeps the PID,
        # so also the password login that the trap allows still works as before).
        assert box.exec("sha256sum /etc/ssh/sshd_config").stdout == before
        assert box.exec("systemctl show -p MainPID --value ssh").stdout == pid_before
    finally:
        box.exec(f"rm -f {VENDOR_DROPIN}")


def test_password_logins_are_off_for_every_kind_of_user(host: Target, ssh_keys: Keys) -> None:
    box = host.host
    # One host key type less than the image has: only the keys present are offered.
    box.exec("rm -f /etc/ssh/ssh_host_ecdsa_key /etc/ssh/ssh_host_ecdsa_key.pub")
    password_before = ssh_run(host, "true", user=ORDINARY, password=ORDINARY_PASSWORD)
    assert password_before.returncode == 0, "the trap works before the play"

    result = run_play("setup_server.yml", host, play_vars(ssh_keys), tags=TAGS)
    assert result.ok, result.describe()

    # 10.88.0.1: where the test machine's connections come from (podman's gateway).
    for user in ("root", "admin", ORDINARY, "nobody"):
        for addr in ("203.0.113.5", "10.88.0.1"):
            settings = effective(box, user, addr)
            assert settings["passwordauthentication"] == "no", (user, addr)
            assert settings["kbdinteractiveauthentication"] == "no", (user, addr)
    refused = ssh_run(host, "true", user=ORDINARY, password=ORDINARY_PASSWORD)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    admin = ssh_run(host, "sudo -n true && echo ok", user="admin", key_file=ssh_keys.admin.path)
    assert admin.stdout.strip() == "ok", admin.stderr

    # Hardening beyond the defaults.
    settings = effective(box, "root")
    assert settings["loglevel"] == "VERBOSE"
    assert settings["hostkeyalgorithms"] == "ssh-ed25519,rsa-sha2-512,rsa-sha2-256"
    hostkeys = box.exec("sshd -T | sed -n 's/^hostkey //p'").stdout.split()
    assert sorted(hostkeys) == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]
    weak = box.exec("awk '$1 !~ /^#/ && NF >= 7 && $5 < 3071' /etc/ssh/moduli | wc -l").stdout
    strong = box.exec("awk '$1 !~ /^#/ && NF >= 7 && $5 >= 3071' /etc/ssh/moduli | wc -l").stdout
    assert int(weak) == 0 and int(strong) > 0
    # VERBOSE logs the key each login used.
    assert ssh_run(host, "true", key_file=ssh_keys.orchestrator.path).returncode == 0
    log = box.exec("journalctl -u ssh --no-pager -n 200").stdout
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{ssh_keys.orchestrator.path}.pub"],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert "Accepted publickey for root from" in log and fingerprint in log

    again = run_play("setup_server.yml", host, play_vars(ssh_keys), tags=TAGS)
    assert again.ok and again.changed == 0, again.describe()
