"""The recovery plays on the converged host: no-ops when healthy, real cleanup of really
filled filesystems, a really hung (SIGSTOPped) Docker daemon brought back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.ansible.conftest import Converged
from tests.support.playrun import run_play
from tests.support.workloads import BUSYBOX_IMAGE, docker_json, ensure_busybox_image, file_size

pytestmark = pytest.mark.hosts

MB = 1024 * 1024
# Exact accounting: only the host's own tmpfs mounts are watched (the root filesystem is
# the shared disk of the machine running the tests, where others write too). podman gives a
# systemd container a tmpfs of its own for /var/log/journal.
WATCHED = {"recover_disk_paths": ["/var/lib/docker", "/var/log", "/var/log/journal"]}


def report(result, converged: Converged) -> dict:  # type: ignore[no-untyped-def]
    return result.artifact["infra_recovery"][converged.host.name]


def test_both_recovery_plays_are_noops_on_a_healthy_host(converged: Converged) -> None:
    result = run_play("recovery.yml", converged.target, WATCHED)
    assert result.ok, result.describe()
    assert result.changed == 0, result.describe()
    seen = report(result, converged)
    assert seen["docker_restarted"] is False
    assert seen["docker"]["healthy_before"] is True
    assert seen["docker"]["actions"] == []
    assert seen["freed_bytes"] == 0
    assert seen["disk"]["needed"] is False
    assert seen["disk"]["actions"] == []
    assert {fs["mount"] for fs in seen["disk"]["filesystems_before"]} == set(
        WATCHED["recover_disk_paths"])
    # Plain values for one-host runs, as the runner reads them.
    assert result.artifact["docker_restarted"] is False
    assert result.artifact["freed_bytes"] == 0
    assert result.artifact["disk_cleanup_needed"] is False


def fill_disks(converged: Converged) -> dict[str, int]:
    """Fill what the play frees: an unused image, build cache, a container log, an oversized
    log in /var/log and archived journal files. Returns the sizes written."""
    host = converged.host
    image = ensure_busybox_image(host)
    # A dangling image (100 MiB layer) and build cache of its own (60 MiB blob;
    # the build exports to nowhere, so it leaves cache but no image).
    host.exec("d=$(mktemp -d) && head -c 100M /dev/urandom > $d/blob"
              " && tar -C $d -c . | docker import - local/fat:1 >/dev/null && rm -rf $d"
              # The tag moves to another image: the 100 MiB one is left dangling (untagged).
              f" && docker tag {image} local/fat:1"
              # A tagged image nothing uses: pruning keeps it (only dangling ones go).
              " && d=$(mktemp -d) && head -c 1M /dev/urandom > $d/small"
              " && tar -C $d -c . | docker import - local/spare:1 >/dev/null && rm -rf $d"
              " && d=$(mktemp -d) && head -c 60M /dev/urandom > $d/blob"
              f" && printf 'FROM {image}\\nCOPY blob /blob\\n' > $d/Dockerfile"
              " && DOCKER_BUILDKIT=1 docker build -q -o type=tar,dest=/dev/null $d >/dev/null"
              " && rm -rf $d", timeout=600)
    # Kept: a running container (and so its image's tag) and a named volume with data.
    host.exec(f"docker rm -f keeper >/dev/null 2>&1; docker volume create keep-data >/dev/null"
              f" && docker run -d --name keeper -v keep-data:/data {image}"
              " sh -c 'echo precious > /data/file; sleep 100000' >/dev/null")
    # A container that wrote a 45 MB log before our daemon.json capped logs at 50m.
    host.exec(f"docker rm -f chatty >/dev/null 2>&1; docker run --name chatty --log-opt max-size=1g"
              f" {image} sh -c 'head -c 45000000 /dev/zero | tr \"\\000\" x | fold -w 8000'"
              " >/dev/null", timeout=600)
    host.exec("python3 - <<'EOF'\n"
              "import base64, os, subprocess\n"
              "p = subprocess.Popen(['systemd-cat', '-t', 'filler'], stdin=subprocess.PIPE)\n"
              "for _ in range(900):\n"
              "    p.stdin.write(base64.b64encode(os.urandom(30000)) + b'\\n')\n"
              "p.stdin.close(); p.wait()\n"
              "EOF\n"
              "sleep 1; journalctl --rotate >/dev/null 2>&1; journalctl --flush", timeout=300)
    # An oversized log that takes /var/log to 88 % of its size: over the 80 % threshold.
    size, used = (int(v) for v in host.exec(
        "rm -f /var/log/app-huge.log && df --output=size,used -B1 /var/log").stdout.split()[-2:])
    huge = int(size * 0.88) - used
    host.exec(f"head -c {huge} /dev/zero > /var/log/app-huge.log")
    chatty_log = host.exec("docker inspect -f '{{.LogPath}}' chatty").stdout.strip()
    return {"chatty_log_size": file_size(host, chatty_log), "huge_log_size": huge}


def test_disk_recovery_frees_what_was_filled(converged: Converged) -> None:
    host = converged.host
    filled = fill_disks(converged)
    chatty_log = host.exec("docker inspect -f '{{.LogPath}}' chatty").stdout.strip()
    assert filled["chatty_log_size"] > 40 * MB
    journal_before = int(host.exec("du -sb /var/log/journal").stdout.split()[0])
    variables = {**WATCHED, "recover_disk_log_max_size": "40m",
                 "recover_disk_journal_max_size": "8M"}

    result = run_play("recovery_disk_space.yml", converged.target, variables)
    assert result.ok, result.describe()
    assert result.changed > 0
    disk = report(result, converged)["disk"]
    assert disk["needed"] is True, disk["filesystems_before"]
    usage = {fs["mount"]: fs["used_percent"] for fs in disk["filesystems_before"]}
    assert usage["/var/log"] >= 80
    reclaimed = disk["reclaimed_bytes"]
    assert reclaimed["docker_images"] >= 100 * MB
    assert reclaimed["docker_build_cache"] >= 60 * MB
    assert reclaimed["docker_volumes"] == 0
    assert reclaimed["logs"] == filled["huge_log_size"] + filled["chatty_log_size"]
    assert reclaimed["journal"] >= 10 * MB
    assert journal_before - reclaimed["journal"] <= 17 * MB  # the limit, plus the active file
    assert set(disk["actions"]) >= {"docker_images", "docker_build_cache", "logs", "journal"}
    assert sorted(disk["truncated_logs"]) == sorted(["/var/log/app-huge.log", chatty_log])
    # The free space measured on the filesystems themselves grew by what was removed.
    on_watched = sum(reclaimed[k] for k in
                     ("docker_images", "docker_build_cache", "logs", "journal"))
    assert disk["freed_bytes"] == disk["free_bytes_after"] - disk["free_bytes_before"]
    assert disk["freed_bytes"] >= 0.9 * on_watched
    assert result.artifact["freed_bytes"] == disk["freed_bytes"]
    assert result.artifact["disk_cleanup_needed"] is True

    # Logs were truncated in place, what is in use was kept.
    assert file_size(host, "/var/log/app-huge.log") == 0
    assert file_size(host, chatty_log) == 0
    images = host.exec("docker image ls --format '{{.Repository}}:{{.Tag}}'").stdout.split()
    # Only the dangling image went: tags in use and unused tags stay.
    assert BUSYBOX_IMAGE in images and "local/fat:1" in images and "local/spare:1" in images
    assert host.exec("docker image ls -q --filter dangling=true").stdout.strip() == ""
    assert host.exec("docker inspect -f '{{.State.Running}}' keeper").stdout.strip() == "true"
    assert host.exec("docker exec keeper cat /data/file").stdout.strip() == "precious"
    build_cache = json.loads(docker_json(host, "/system/df"))["BuildCache"] or []
    assert sum(entry["Size"] for entry in build_cache) == 0

    # Below the threshold again: a second run has nothing to do.
    again = run_play("recovery_disk_space.yml", converged.target, variables)
    assert again.ok and again.changed == 0, again.describe()
    assert report(again, converged)["disk"]["needed"] is False


POLICIES = ("always", "unless-stopped", "on-failure")


@pytest.fixture
def hung_docker(converged: Converged) -> Iterator[int]:
    """Workloads with each restart policy, then dockerd stopped with SIGSTOP: the process
    exists, the socket accepts, nothing answers."""
    host = converged.host
    image = ensure_busybox_image(host)
    for policy in POLICIES:
        host.exec(f"docker rm -f keep-{policy} >/dev/null 2>&1; docker run -d --name keep-{policy}"
                  f" --restart {policy} {image} sleep 100000 >/dev/null")
    pid = int(host.exec("systemctl show --property=MainPID --value docker").stdout)
    host.exec(f"kill -STOP {pid}")
    try:
        yield pid
    finally:
        host.exec(f"kill -CONT {pid} 2>/dev/null || true")


def started_at(converged: Converged, name: str) -> str:
    answer = converged.host.exec(f"docker inspect -f '{{{{.State.StartedAt}}}}' {name}")
    return answer.stdout.strip()


def assert_new_daemon_and_workloads_untouched(converged: Converged, old_pid: int,
                                              before: dict[str, str]) -> None:
    """A new dockerd answers, and every workload still runs with its original start time."""
    host = converged.host
    new_pid = int(host.exec("systemctl show --property=MainPID --value docker").stdout)
    assert new_pid not in (0, old_pid)
    assert host.exec("timeout 10 docker info --format '{{.ServerVersion}}'").returncode == 0
    for policy in POLICIES:
        name = f"keep-{policy}"
        running = host.exec(f"docker inspect -f '{{{{.State.Running}}}}' {name}").stdout.strip()
        assert running == "true", f"{name} does not run after the recovery"
        assert started_at(converged, name) == before[policy], f"{name} was restarted"


def test_docker_recovery_brings_a_hung_daemon_back(converged: Converged, hung_docker: int) -> None:
    host = converged.host
    # Recorded before the hang (the fixture started them): when each container started.
    host.exec(f"kill -CONT {hung_docker}")
    before = {policy: started_at(converged, f"keep-{policy}") for policy in POLICIES}
    host.exec(f"kill -STOP {hung_docker}")
    stuck = host.exec("timeout 5 docker info", check=False)
    assert stuck.returncode == 124, "docker info should hang while dockerd is stopped"

    result = run_play("recovery_docker.yml", converged.target, {"recover_docker_info_timeout": 10})
    assert result.ok, result.describe()
    docker = report(result, converged)["docker"]
    assert docker["healthy_before"] is False
    assert "10s" in docker["error_before"]
    assert docker["restarted"] is True and docker["healthy_after"] is True
    # Through systemd; containerd answered all along, so it was left alone.
    assert "restarted_docker" in docker["actions"]
    assert "restarted_containerd" not in docker["actions"]
    assert set(docker["containers_before"]) >= {f"keep-{policy}" for policy in POLICIES}
    assert docker["containers_down"] == []
    assert result.artifact["docker_restarted"] is True
    assert result.artifact["docker_was_responsive"] is False
    assert result.artifact["infra_ssh"]["listen_ports"] == [22]

    # live-restore: the workloads never stopped while the daemon restarted.
    assert_new_daemon_and_workloads_untouched(converged, hung_docker, before)


def test_docker_recovery_fails_naming_a_workload_that_does_not_come_back(
        converged: Converged) -> None:
    """A container that ran with a restart policy and cannot start again (its bind-mount
    source vanished while the daemon hung) makes the play fail and name it."""
    host = converged.host
    image = ensure_busybox_image(host)
    host.exec(f"docker rm -f fragile >/dev/null 2>&1; mkdir -p /srv/fragile && docker run -d"
              f" --name fragile --restart always --mount type=bind,src=/srv/fragile,dst=/data"
              f" {image} sleep 100000 >/dev/null")
    child = host.exec("docker inspect -f '{{.State.Pid}}' fragile").stdout.strip()
    pid = int(host.exec("systemctl show --property=MainPID --value docker").stdout)
    host.exec(f"kill -STOP {pid} && kill -9 {child} && rm -rf /srv/fragile")
    try:
        result = run_play("recovery_docker.yml", converged.target,
                          {"recover_docker_info_timeout": 10,
                           "recover_docker_containers_timeout": 9})
        assert not result.ok
        assert "fragile" in result.failures[-1]["msg"], result.describe()
        docker = report(result, converged)["docker"]
        assert docker["containers_down"] == ["fragile"]
        assert docker["healthy_after"] is True
    finally:
        host.exec(f"kill -CONT {pid} 2>/dev/null; docker rm -f fragile >/dev/null 2>&1",
                  check=False)


# Go programs take SIGURG for their scheduler's own preemption signal and otherwise ignore
# it: as docker.service's stop signal it makes a dockerd that never stops when asked (as a
# deadlocked one does not act on SIGTERM). TimeoutStopSec=infinity keeps systemd from
# sending its own SIGKILL, so only the play's bound can end it.
DEAF_DROPIN = "/etc/systemd/system/docker.service.d/zz-test-ignore-stop.conf"


@pytest.fixture
def deaf_docker(converged: Converged) -> Iterator[int]:
    """Workloads with each restart policy, and a dockerd that ignores systemd's stop signal."""
    host = converged.host
    image = ensure_busybox_image(host)
    for policy in POLICIES:
        host.exec(f"docker rm -f keep-{policy} >/dev/null 2>&1; docker run -d --name keep-{policy}"
                  f" --restart {policy} {image} sleep 100000 >/dev/null")
    host.write_file(DEAF_DROPIN, "[Service]\nKillSignal=SIGURG\nTimeoutStopSec=infinity\n")
    host.exec("systemctl daemon-reload")
    pid = int(host.exec("systemctl show --property=MainPID --value docker").stdout)
    try:
        yield pid
    finally:
        host.exec(f"rm -f {DEAF_DROPIN} && systemctl daemon-reload; "
                  "systemctl is-active -q docker || { systemctl kill -s KILL docker;"
                  " systemctl start docker; }", check=False, timeout=300)


def test_docker_recovery_kills_a_daemon_that_does_not_stop(
        converged: Converged, deaf_docker: int) -> None:
    host = converged.host
    assert host.exec("systemctl show --property=KillSignal --value docker").stdout.strip() == "23"
    before = {policy: started_at(converged, f"keep-{policy}") for policy in POLICIES}
    since = host.exec("date +%s").stdout.strip()

    result = run_play("recovery_docker.yml", converged.target,
                      {"recover_docker_force": True, "recover_docker_stop_timeout": 15},
                      timeout=600)  # without the kill, the restart would wait for ever

    assert result.ok, result.describe()
    docker = report(result, converged)["docker"]
    assert docker["actions"][:2] == ["restarted_docker", "killed_dockerd"], docker
    assert docker["restarted"] is True and docker["healthy_after"] is True
    assert docker["containers_down"] == []
    assert "killed_dockerd" in result.output  # the play's closing summary says so too
    # The old daemon is gone (killed: it never acted on the stop signal), a new one answers.
    assert host.exec(f"test -e /proc/{deaf_docker}", check=False).returncode != 0 or \
        "dockerd" not in host.exec(f"cat /proc/{deaf_docker}/comm", check=False).stdout
    # systemd saw the daemon die of SIGKILL (not stop on its own).
    journal = host.exec(f"journalctl -u docker.service --since @{since} --no-pager").stdout
    assert "status=9/KILL" in journal, journal[-3000:]
    # live-restore: a SIGKILLed daemon leaves the containers running too.
    assert_new_daemon_and_workloads_untouched(converged, deaf_docker, before)
