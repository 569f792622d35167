"""The play's environment: its private directory, inventory of public host variables, the
variables its processes get, and the SSH port contract between the run and the play.

Host variables are public values only (secrets never reach Ansible: the key sits in the
run's ssh-agent). The play keeps sshd on ``infra_ssh_port`` (the port the run connected on)
unless ``ssh_port`` asks for a move, and reports where sshd listens in the end as
``set_stats`` ``infra_ssh.connect_port``, read back by ``connect_port_from``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.messages import ProvisionerMessage
from runner_image.db import ServerRecord
from runner_image.plan import PlanCollector
from runner_image.settings import RunnerSettings

log = logging.getLogger(__name__)


@dataclass
class PlayEnvironment:
    private_data_dir: Path
    project_dir: Path
    inventory: Path
    envvars: dict[str, str]
    # Set for a plan: the plays run in check and diff mode and their events go here too.
    plan: PlanCollector | None = None

    def plan_notes(self, playbook: Path) -> Path:
        """Where the plan's callback plugin writes its notes on ``playbook`` (one file per
        playbook: task ids are unique within one ansible-playbook process only)."""
        return self.private_data_dir / f"plan-notes-{playbook.stem}.jsonl"


def mitogen_strategy_dir() -> Path:
    """Where Mitogen's strategy plugins are installed (they ship inside the package).

    ImportError when Mitogen is missing: the run reports that as a PLAY_MITOGEN
    configuration error, so the import is here rather than a start-up failure of the module.
    """
    import ansible_mitogen

    return Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"


def mitogen_envvars() -> dict[str, str]:
    """Ansible settings that make Mitogen's linear strategy the default of a run."""
    return {"ANSIBLE_STRATEGY_PLUGINS": str(mitogen_strategy_dir()),
            "ANSIBLE_STRATEGY": "mitogen_linear"}


def prepare_environment(directory: Path, project_dir: Path, ssh_config: Path, control_dir: Path,
                        host_vars: dict[str, Any], host: str, *, mitogen: bool = False,
                        passthrough: list[str] | None = None,
                        plan: PlanCollector | None = None) -> PlayEnvironment:
    home = directory / "home"
    local_tmp = directory / "tmp"
    for path in (home, home / ".ansible", local_tmp):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    inventory = directory / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {host: host_vars}}}))
    envvars = {
        # The ansible-playbook of this environment first, not whichever else is on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HOME": str(home),
        "ANSIBLE_HOME": str(home / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(local_tmp),
        # Same private config as the runner's own SSH check: known_hosts, agent, ControlPath.
        "ANSIBLE_SSH_ARGS": f"-F {ssh_config} -o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_SSH_CONTROL_PATH": "%(directory)s/%%C",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
    }
    # Variables the operator chose to hand to the plays (PLAY_ENV_PASSTHROUGH).
    envvars |= {name: os.environ[name] for name in passthrough or () if name in os.environ}
    if mitogen:
        # One persistent interpreter on the server for the whole play instead of a fresh
        # Python (and module upload) per task. Its ssh runs with the same ANSIBLE_SSH_ARGS,
        # so it reuses the control master the SSH check opened.
        envvars |= mitogen_envvars()
    return PlayEnvironment(directory, project_dir, inventory, envvars, plan)


# What the play's processes get from the runner's own environment: locale, PATH and the
# operator's ANSIBLE_* settings. Everything else (the message, database and Redis URLs,
# whatever the pod was given) stays with the runner; secrets were already removed.
PASSED_ENVIRONMENT = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSL_CERT_FILE",
                                "SSL_CERT_DIR"})


def passed(name: str) -> bool:
    """Whether the play's processes inherit the runner's variable ``name``."""
    return name in PASSED_ENVIRONMENT or name.startswith(("LC_", "ANSIBLE_"))


def host_vars(settings: RunnerSettings, server: ServerRecord,
              message: ProvisionerMessage) -> dict[str, Any]:
    """The inventory's variables for the server: the operator's PLAY_VARS, then the
    connection and the run's identity, which PLAY_VARS cannot override."""
    assert message.request_id is not None
    variables = {
        **settings.play_vars,
        "ansible_host": server.address,
        "ansible_port": server.ssh_port,
        "ansible_user": server.ssh_user,
        "ansible_python_interpreter": settings.target_python,
        "infra_server_handle": message.server_handle,
        "infra_request_id": message.request_id,
        "infra_action": message.action.value,
        "infra_deploy_key_user": settings.deploy_key_user,
        "infra_orchestrator_public_key": settings.orchestrator_ssh_public_key,
        # The SSH port contract: the port sshd must keep listening on (the one the run
        # connected on); ssh_port only when a move was explicitly requested.
        "infra_ssh_port": server.ssh_port,
    }
    variables.pop("ssh_port", None)
    if settings.requested_ssh_port is not None:
        variables["ssh_port"] = settings.requested_ssh_port
    return variables


def connect_port_from(stats: dict[str, Any], current: int) -> int:
    """``infra_ssh.connect_port`` reported by the play (set_stats), else ``current``."""
    report = stats.get("infra_ssh")
    if not isinstance(report, dict):
        return current
    port = report.get("connect_port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        if port is not None:
            log.warning("ignoring an invalid infra_ssh.connect_port from the play",
                        extra={"reported": str(port)[:40]})
        return current
    return port
