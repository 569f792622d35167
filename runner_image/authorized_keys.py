"""The run's key step: the provisioner's own key and the Orchestrator's deploy key put in
the servers' authorized_keys over the run's SSH connection.

The provisioner's key goes to the login user, so a server first reached with a password is
reached by key afterwards; the deploy key goes to DEPLOY_KEY_USER. The remote script and
its guarantees (one line per key, no symlink followed) are in runner_image/deploy_key.py.
"""

from __future__ import annotations

import logging

from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.deadline import RunDeadline
from runner_image.deploy_key import PublicKey, install_script
from runner_image.ssh import SshClient, SshError

log = logging.getLogger(__name__)


async def install_keys(client: SshClient, login_user: str, own_key: PublicKey,
                       deploy_user: str, deploy_key: PublicKey, *, command_timeout: float,
                       deadline: RunDeadline) -> bool | out.Outcome:
    """The provisioner's key for the login user and the deploy key for ``deploy_user``,
    each present exactly once; whether any authorized_keys changed, or the failure."""
    plan: dict[str, list[PublicKey]] = {login_user: [own_key]}
    plan.setdefault(deploy_user, []).append(deploy_key)
    sudo = "" if login_user == "root" else "sudo -n "
    changed = False
    for user, keys in plan.items():
        deadline.require("the key installation")
        try:
            result = await client.run(f"{sudo}sh -s -- {user}", stdin=install_script(keys),
                                      limit=deadline.cap(command_timeout))
        except SshError as exc:
            return out.failed(ErrorKind.DEPLOY_KEY_FAILED,
                              f"installing SSH keys for user {user} failed: {exc.message}")
        changed = changed or "authorized_keys changed" in result.stdout
    log.info("keys installed", extra={"deploy_key_user": deploy_user, "changed": changed})
    return changed
