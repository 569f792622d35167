"""yamllint and ansible-lint (production profile) over the Ansible content."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.playrun import ANSIBLE_DIR, REPO

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)


def test_yamllint_passes() -> None:
    done = run(str(BIN / "yamllint"), "--strict", str(ANSIBLE_DIR.relative_to(REPO)))
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_production_profile_passes() -> None:
    done = run(str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor",
               str(ANSIBLE_DIR.relative_to(REPO)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_every_playbook_passes_syntax_check() -> None:
    playbooks = sorted((ANSIBLE_DIR / "playbooks").glob("*.yml"))
    assert {p.name for p in playbooks} >= {"setup_server.yml", "provision_access.yml",
                                           "recovery_disk_space.yml", "recovery_docker.yml"}
    done = run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
               *map(str, playbooks))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_role_variable_is_documented() -> None:
    readme = (ANSIBLE_DIR / "README.md").read_text()
    missing = []
    for defaults in sorted((ANSIBLE_DIR / "roles").glob("*/defaults/main.yml")):
        for line in defaults.read_text().splitlines():
            name = line.split(":", 1)[0]
            if line and not line[0].isspace() and not line.startswith(("#", "-")) \
                    and f"`{name}`" not in readme:
                missing.append(f"{defaults.parent.parent.name}: {name}")
    assert not missing, f"not documented in ansible/README.md: {missing}"
