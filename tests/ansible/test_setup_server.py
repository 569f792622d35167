"""setup_server.yml on a fresh VPS: converge, idempotence, and the result seen from outside."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from tests.ansible.conftest import (
    CLOSED_PORT,
    CLOUD_INIT_DROPIN,
    OPEN_PORT,
    ROOT_PASSWORD,
    Converged,
)
from tests.support.hosts import wait_for_ssh
from tests.support.playrun import run_play, ssh_run
from tests.support.workloads import ensure_busybox_image, run_web

pytestmark = pytest.mark.hosts


def sshd_settings(converged: Converged) -> dict[str, str]:
    out = converged.host.exec("sshd -T").stdout
    return {k: v for k, _, v in (line.partition(" ") for line in out.splitlines())}


def http_get(port: int, timeout: float = 4) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as answer:
        return answer.read().decode()


def test_the_first_run_changed_the_host_and_reports_it(converged: Converged) -> None:
    result = converged.first_run
    host = converged.host.name
    assert result.changed > 0
    assert result.artifact["infra_setup"][host]["ssh_port"] == 22
    assert result.artifact["infra_setup"][host]["admin_user"] == "admin"
    assert result.artifact["infra_setup"][host]["docker_version"].startswith("20.10")
    assert result.artifact["ssh_port"] == 22
    assert result.artifact["ssh_port_moved"] is False
    # The port contract with the runner: read from the host, nothing moved.
    assert result.artifact["infra_ssh"] == {
        "listen_ports": [22], "connect_port": converged.target.port, "moved": False}
    print(f"\nconverge of a fresh host: {result.duration:.1f} s, {result.changed} changed")


def test_the_root_password_never_appeared_on_a_command_line(converged: Converged) -> None:
    watch = converged.password_watch
    assert watch.samples > 100, "the watch sampled the whole converge"
    assert watch.hits == []


def test_a_second_run_changes_nothing(converged: Converged) -> None:
    # Logs in with the provisioner's key now: the first run turned passwords off.
    again = run_play("setup_server.yml", converged.target, converged.variables)
    assert again.ok, again.describe()
    assert again.changed == 0, f"changed tasks on the second run:\n{again.describe()}"
    print(f"\nre-run on the converged host: {again.duration:.1f} s")


def test_password_login_is_refused_and_key_logins_work(converged: Converged) -> None:
    assert converged.password_login_worked_before, "the password worked on the fresh host"
    refused = ssh_run(converged.target, "true", password=ROOT_PASSWORD)
    assert refused.returncode != 0
    assert "Permission denied (publickey)" in refused.stderr
    # The provisioner's key, the Orchestrator's deploy key, the admin's key with sudo.
    assert ssh_run(converged.target, "id -u").stdout.strip() == "0"
    deploy = ssh_run(converged.target, "true", key_file=converged.keys.orchestrator.path)
    assert deploy.returncode == 0, deploy.stderr
    admin = ssh_run(converged.target, "sudo -n id -u", user="admin",
                    key_file=converged.keys.admin.path)
    assert admin.returncode == 0, admin.stderr
    assert admin.stdout.strip() == "0"
    stranger = ssh_run(converged.target, "true", key_file=converged.keys.stranger.path)
    assert stranger.returncode != 0


def test_sshd_runs_hardened_despite_cloud_init_drop_in(converged: Converged) -> None:
    dropin = converged.host.exec(f"cat {CLOUD_INIT_DROPIN}").stdout
    assert "PasswordAuthentication yes" in dropin, "the trap is still in place"
    settings = sshd_settings(converged)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "without-password"
    assert settings["pubkeyauthentication"] == "yes"
    assert settings["permitemptypasswords"] == "no"
    assert settings["x11forwarding"] == "no"
    assert settings["allowtcpforwarding"] == "no"
    assert settings["maxauthtries"] == "4"
    assert settings["port"] == "22"
    assert settings["ciphers"] == ("chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
                                   "aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr")
    assert settings["macs"] == ("hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,"
                                "umac-128-etm@openssh.com")
    assert settings["kexalgorithms"].startswith(
        "sntrup761x25519-sha512@openssh.com,curve25519-sha256")
    assert "diffie-hellman-group14-sha1" not in settings["kexalgorithms"]


def test_admin_user_and_sudo_rule(converged: Converged) -> None:
    host = converged.host
    entry = host.exec("getent passwd admin").stdout.strip().split(":")
    assert entry[5] == "/home/admin" and entry[6] == "/bin/bash"
    rule = host.exec("stat -c '%a %U %G' /etc/sudoers.d/90-admin && cat /etc/sudoers.d/90-admin")
    assert rule.stdout.splitlines()[0] == "440 root root"
    assert "admin ALL=(ALL:ALL) NOPASSWD: ALL" in rule.stdout
    assert host.exec("visudo -c", check=False).returncode == 0
    assert "(ALL : ALL) NOPASSWD: ALL" in host.exec("sudo -l -U admin").stdout
    keys = host.exec("stat -c '%a %U' /home/admin/.ssh /home/admin/.ssh/authorized_keys").stdout
    assert keys.split("\n")[:2] == ["700 admin", "600 admin"]


def test_deploy_key_is_installed_once_for_root(converged: Converged) -> None:
    lines = converged.host.exec("cat /root/.ssh/authorized_keys").stdout.splitlines()
    body = converged.keys.orchestrator.public.split()[1]
    assert sum(body in line for line in lines) == 1
    assert converged.keys.orchestrator.public in lines
    assert converged.keys.provisioner.public in lines
    modes = converged.host.exec("stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys").stdout
    assert modes.split("\n")[:2] == ["700 root", "600 root"]


def test_firewall_ruleset_is_loaded_and_persisted(converged: Converged) -> None:
    host = converged.host
    table = json.loads(host.exec("nft -j list table inet host_firewall").stdout)["nftables"]
    chains = {item["chain"]["name"]: item["chain"] for item in table if "chain" in item}
    sets = {item["set"]["name"]: item["set"].get("elem", []) for item in table if "set" in item}
    assert chains["input"]["hook"] == "input" and chains["input"]["policy"] == "drop"
    assert chains["forward"]["hook"] == "forward" and chains["forward"]["policy"] == "drop"
    assert sets["ssh_ports"] == [22]
    assert sets["tcp_in"] == [OPEN_PORT]
    assert sets["tcp_published"] == [OPEN_PORT]
    rules = host.exec("nft list table inet host_firewall").stdout
    assert "ct state established,related accept" in rules
    assert 'iif "lo" accept' in rules
    assert "meta l4proto { icmp, ipv6-icmp } accept" in rules  # one inet table: IPv4 and IPv6
    assert "tcp dport @ssh_ports accept" in rules
    assert "ct status dnat meta l4proto tcp ct original proto-dst @tcp_published accept" in rules
    assert host.exec("systemctl is-enabled nftables").stdout.strip() == "enabled"
    # Debian's untouched default main file (with "flush ruleset") was replaced by one that
    # includes our own file, and kept as a backup; neither file we load flushes anything.
    loaded_at_boot = host.exec("cat /etc/nftables.conf /etc/nftables.d/infra-host-firewall.nft"
                               ).stdout.splitlines()
    assert 'include "/etc/nftables.d/infra-host-firewall.nft"' in loaded_at_boot
    assert not [line for line in loaded_at_boot if "flush" in line.split("#")[0]]
    backups = host.exec("cat /etc/nftables.conf.*~").stdout
    assert "flush ruleset" in backups and "table inet filter" in backups
    assert "add @ssh_rate_v4 { ip saddr limit rate over 30/minute burst 20 packets } drop" in rules
    # Docker's own rules are still there next to ours.
    assert "chain DOCKER" in host.exec("nft list table ip nat").stdout


def test_unlisted_published_port_is_unreachable_from_outside(converged: Converged) -> None:
    host = converged.host
    run_web(host, "web-open", OPEN_PORT)
    run_web(host, "web-closed", CLOSED_PORT)
    # Both containers serve: from inside the host, both published ports answer.
    for port in (OPEN_PORT, CLOSED_PORT):
        inside = host.exec(f"curl -sf --retry 5 --retry-connrefused --retry-delay 1 "
                           f"http://127.0.0.1:{port}/", check=False)
        assert inside.stdout.strip() == "hello-from-container", inside.stderr
    # From outside (the test machine, through podman's published ports) only the listed one.
    assert http_get(host.extra_ports[OPEN_PORT]).strip() == "hello-from-container"
    with pytest.raises((urllib.error.URLError, TimeoutError, ConnectionError, socket.timeout)):
        http_get(host.extra_ports[CLOSED_PORT])
    counters = host.exec("nft list chain inet host_firewall forward").stdout
    assert "policy drop" in counters


def test_docker_answers_with_the_configured_daemon(converged: Converged) -> None:
    host = converged.host
    info = json.loads(host.exec("docker info --format '{{json .}}'").stdout)
    assert info["ServerVersion"].startswith("20.10")
    assert info["Driver"] == "vfs"  # docker_storage_driver reached daemon.json
    daemon = json.loads(host.exec("cat /etc/docker/daemon.json").stdout)
    assert daemon["log-opts"] == {"max-size": "50m", "max-file": "3"}
    assert daemon["default-cgroupns-mode"] == "private"
    assert daemon["live-restore"] is True and daemon["no-new-privileges"] is True
    assert info["LiveRestoreEnabled"] is True
    # no-new-privileges reaches the containers (the web containers above run under it).
    status = host.exec(f"docker run --rm {ensure_busybox_image(host)} cat /proc/self/status").stdout
    assert "NoNewPrivs:\t1" in status
    for unit in ("docker", "containerd"):
        assert host.exec(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
        assert host.exec(f"systemctl is-active {unit}").stdout.strip() == "active"
    assert "docker-compose version 1.29" in host.exec("docker-compose version").stdout
    assert "git" not in host.exec("dpkg-query -W -f '${Package}\\n'").stdout.split()


def test_kernel_settings_time_sync_and_unattended_upgrades(converged: Converged) -> None:
    host = converged.host
    values = host.exec("sysctl -n net.ipv4.ip_forward net.ipv4.tcp_syncookies "
                       "net.ipv4.conf.all.accept_redirects net.ipv4.conf.all.send_redirects"
                       ).stdout.split()
    assert values == ["1", "1", "0", "0"]
    assert "net.ipv4.ip_forward = 1" in host.exec("cat /etc/sysctl.d/60-infra-base.conf").stdout
    assert host.exec("systemctl is-enabled systemd-timesyncd").stdout.strip() == "enabled"
    config = host.exec("apt-config dump").stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    patterns = [line for line in config.splitlines()
                if line.startswith("Unattended-Upgrade::Origins-Pattern::")]
    assert patterns and all("Debian-Security" in line for line in patterns)
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.exec(f"systemctl is-enabled {timer}").stdout.strip() == "enabled"
    dry_run = host.exec("unattended-upgrade --dry-run", check=False, timeout=300)
    assert dry_run.returncode == 0, dry_run.stderr


def test_everything_survives_a_reboot(converged: Converged) -> None:
    host = converged.host
    host.stop()
    host.start()
    wait_for_ssh(host)
    assert "policy drop" in host.exec("nft list chain inet host_firewall input").stdout
    assert host.exec("systemctl is-active docker", check=False).stdout.strip() == "active"
    assert host.exec("sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    assert ssh_run(converged.target, "true").returncode == 0
    refused = ssh_run(converged.target, "true", password=ROOT_PASSWORD)
    assert "Permission denied (publickey)" in refused.stderr
