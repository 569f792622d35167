"""Smoke tests of the built images, run the way Kubernetes runs them (read-only root, an
emptyDir-like scratch mount, no capabilities)."""

from __future__ import annotations

import json
import tomllib
import uuid
from datetime import datetime

import pytest
import redis

from contracts.keys import Keys
from tests.support.images import REPO, Image, run
from tests.support.services import RedisServer

MB = 1_000_000  # as `podman images` / `docker images` count
# The dispatcher carries asyncpg for the run history (about 11 MB of compiled modules; 151.5
# MB measured with it, 139 MB before).
SIZE_BUDGET = {"dispatcher": 160 * MB, "runner": 350 * MB}
UID = "10001"


@pytest.fixture(params=["dispatcher", "runner"])
def image(request: pytest.FixtureRequest) -> Image:
    return request.getfixturevalue(f"{request.param}_image")


def output(done) -> str:
    return done.stdout + done.stderr


def test_help(image: Image) -> None:
    done = run(image, "--help")
    assert done.returncode == 0, output(done)
    module = "dispatcher" if image.component == "dispatcher" else "runner_image"
    assert f"usage: python -m {module}" in done.stdout
    assert ("enqueue" if image.component == "dispatcher" else "register-server") in done.stdout


@pytest.mark.parametrize(("name", "value", "named"), [
    ("REDIS_URL", "redis://:{secret}@127.0.0.1:6379/0", ("REDIS_URL", "REDIS_PASSWORD")),
    ("DISPATCHER_MAX_IN_FLIGHT", "0{secret}", ("DISPATCHER_MAX_IN_FLIGHT",)),
])
def test_dispatcher_refuses_bad_settings_naming_the_variable(
        dispatcher_image: Image, name: str, value: str, named: tuple[str, ...]) -> None:
    secret = f"pw{uuid.uuid4().hex}"
    done = run(dispatcher_image, "run", env={name: value.format(secret=secret)})
    assert done.returncode == 2, output(done)
    for variable in named:
        assert variable in done.stderr
    assert secret not in output(done)


def test_runner_without_message_says_so(runner_image: Image) -> None:
    done = run(runner_image, "run")
    assert done.returncode == 13, output(done)
    assert "PROVISIONER_MESSAGE is not set" in output(done)


def test_runner_missing_settings_are_named_and_reported(runner_image: Image,
                                                        redis_srv: RedisServer) -> None:
    """The Job's env lacks the SSH key and the deploy key: the runner exits with REJECTED,
    names the missing variables, echoes no secret, and still reports."""
    request_id = f"img-{uuid.uuid4().hex[:12]}"
    secrets = {"DATABASE_PASSWORD": f"db-{uuid.uuid4().hex}",
               "PROVIDER_API_PASSWORD": f"api-{uuid.uuid4().hex}",
               "REDIS_PASSWORD": redis_srv.password or ""}
    msg = {"server_handle": "srv-image-1", "request_id": request_id,
           "enqueued_at": "2026-01-01T00:00:00+00:00"}
    done = run(runner_image, "run", network_host=True, env={
        "PROVISIONER_MESSAGE": json.dumps(msg), "JOB_NAME": "prov-srv-image-1-abc",
        "REDIS_URL": redis_srv.url, **secrets})
    assert done.returncode == 13, output(done)
    for name in ("SSH_PRIVATE_KEY", "ORCHESTRATOR_SSH_PUBLIC_KEY"):
        assert name in done.stderr
    client = redis.Redis.from_url(redis_srv.url, password=redis_srv.password)
    try:
        entries = [json.loads(e) for e in client.lrange(Keys().results, 0, -1)]
    finally:
        client.close()
    mine = [e for e in entries if e.get("request_id") == request_id]
    assert len(mine) == 1, entries
    assert mine[0]["status"] == "rejected"
    assert mine[0]["error"]["kind"] == "config_error"
    assert "SSH_PRIVATE_KEY" in mine[0]["error"]["message"]
    for value in secrets.values():
        assert value not in output(done)
        assert value not in json.dumps(mine[0])


def test_read_only_root_with_scratch(image: Image) -> None:
    probe = (
        "import os, pathlib, tempfile\n"
        f"assert os.getuid() == {UID} and os.getgid() == {UID}, os.getuid()\n"
        "for path in ('/opt/infra-service/probe', '/etc/probe', '/tmp/probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError:\n"
        "        continue\n"
        "    raise SystemExit(f'{path} is writable')\n"
        "fd, name = tempfile.mkstemp()\n"
        "assert name.startswith('/scratch/'), name\n"
        "pathlib.Path(os.environ['HOME'], 'x').write_text('ok')\n"
        "print(os.environ['HOME'])\n"
    )
    done = run(image, "-c", probe, entrypoint="python")
    assert done.returncode == 0, output(done)
    assert done.stdout.strip() == "/scratch"


def test_runner_tools_work_read_only(runner_image: Image) -> None:
    script = ("set -e; ansible-playbook --version | head -n1; ansible-runner --version; "
              "ssh -V 2>&1; command -v ssh-agent ssh-add sshpass; "
              "cd \"$PLAY_PROJECT_DIR\" && ansible-config dump --only-changed | grep -i roles_path")
    done = run(runner_image, "-c", script, entrypoint="/bin/sh")
    assert done.returncode == 0, output(done)
    assert "ansible-playbook [core 2." in done.stdout
    assert "OpenSSH_" in done.stdout
    # ansible.cfg of the packaged tree is honoured (ignored if its directory were writable).
    assert "/opt/infra-service/ansible/roles" in done.stdout


ZOMBIE_PROBE = """
import pathlib, subprocess, time
# The shell exits at once; its background sleep is orphaned and re-parented to PID 1.
subprocess.run(["sh", "-c", "sleep 0.3 & exit 0"], check=True)
time.sleep(1.5)
zombies = [p.read_text().split(")")[0] for p in pathlib.Path("/proc").glob("[0-9]*/stat")
           if p.read_text().rsplit(")", 1)[1].split()[0] == "Z"]
print("zombies:", len(zombies))
"""


def test_tini_reaps_orphaned_children(runner_image: Image) -> None:
    """Ansible's ssh children outlive their parents; PID 1 must reap them."""
    assert json.loads(runner_image.inspect("{{json .Config.Entrypoint}}"))[:2] == [
        "/usr/bin/tini", "--"]
    with_tini = run(runner_image, "--", "python", "-c", ZOMBIE_PROBE, entrypoint="/usr/bin/tini")
    assert with_tini.returncode == 0, output(with_tini)
    assert with_tini.stdout.strip() == "zombies: 0"
    # Control: the same probe with python itself as PID 1 leaves the zombie behind.
    bare = run(runner_image, "-c", ZOMBIE_PROBE, entrypoint="python")
    assert bare.stdout.strip() == "zombies: 1", output(bare)


def test_no_build_tools_or_installers(image: Image) -> None:
    script = ("for t in gcc cc c++ make ld as pip pip3 apt-get apt perl; do "
              "command -v $t >/dev/null && echo \"found $t\"; done; "
              "ls /opt/infra-service/venv/lib/python3*/site-packages | grep -iE "
              "'^(pip|setuptools|wheel)$' || true")
    done = run(image, "-c", script, entrypoint="/bin/sh")
    assert done.returncode == 0, output(done)
    assert done.stdout.strip() == ""


def test_each_image_ships_its_own_package_and_the_contracts(image: Image) -> None:
    own, other = (("dispatcher", "runner_image") if image.component == "dispatcher"
                  else ("runner_image", "dispatcher"))
    script = ("import importlib.util as u; "
              f"print(*(u.find_spec(n) is not None for n in ('{own}', 'contracts', '{other}')))")
    done = run(image, "-c", script, entrypoint="python")
    assert done.returncode == 0, output(done)
    assert done.stdout.split() == ["True", "True", "False"]
    scripts = run(image, "-c", "ls /opt/infra-service/venv/bin | grep '^infra-'",
                  entrypoint="/bin/sh")
    assert scripts.stdout.split() == [f"infra-{image.component}"]  # no console script of the other


def test_runner_carries_the_ansible_tree(runner_image: Image) -> None:
    done = run(runner_image, "-c", "cd \"$PLAY_PROJECT_DIR\" && find . -type f | sort && "
               "find . ! -type l \\( -perm -o+w -o -perm -g+w \\) | wc -l", entrypoint="/bin/sh")
    assert done.returncode == 0, output(done)
    *listed, writable = done.stdout.split()
    tree = REPO / "ansible"
    expected = sorted(f"./{p.relative_to(tree)}" for p in tree.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    assert listed == expected
    assert writable == "0"


def test_labels_and_user(image: Image) -> None:
    labels = json.loads(image.inspect("{{json .Config.Labels}}"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.title"] == f"infra-service-{image.component}"
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.revision"]
    assert labels["org.opencontainers.image.base.name"]
    created = labels["org.opencontainers.image.created"]
    assert datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ"), created
    assert labels["org.opencontainers.image.source"]
    assert image.inspect("{{.Config.User}}") == f"{UID}:{UID}"


def test_size_within_budget(image: Image) -> None:
    size = image.size_bytes
    print(f"{image.ref}: {size / MB:.1f} MB (budget {SIZE_BUDGET[image.component] / MB:.0f} MB)")
    assert size <= SIZE_BUDGET[image.component]


def test_dockerignore_keeps_the_context_small() -> None:
    """Everything the Dockerfiles COPY is let through, and nothing else."""
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for dockerfile in REPO.glob("Dockerfile.*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                copied.add(line.split()[1].rstrip("/"))
    assert copied == allowed
    assert rules[0] == "*"
