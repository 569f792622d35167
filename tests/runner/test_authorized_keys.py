"""The key step (runner_image.authorized_keys.install_keys) over an SSH client with
scripted answers: which user gets which key, how, and the outcome of a failure. The script
itself runs on real hosts in test_deploy_key.py."""

from __future__ import annotations

import pytest

from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.authorized_keys import install_keys
from runner_image.deploy_key import PublicKey, parse_public_key
from runner_image.ssh import SshError, SshErrorKind
from tests.support.keys import Keypair
from tests.support.runner_fakes import NO_DEADLINE, FakeSshClient, ok

pytestmark = pytest.mark.unit


@pytest.fixture
def keys(provisioner_key: Keypair, orchestrator_key: Keypair) -> tuple[PublicKey, PublicKey]:
    return parse_public_key(provisioner_key.public), parse_public_key(orchestrator_key.public)


async def test_each_user_gets_its_key_through_one_script(
        keys: tuple[PublicKey, PublicKey]) -> None:
    own, deploy = keys
    client = FakeSshClient(ok("authorized_keys unchanged\n"), ok("authorized_keys changed\n"))
    changed = await install_keys(client, "root", own, "deploy", deploy,
                                 command_timeout=7.0, deadline=NO_DEADLINE)
    assert changed is True
    assert [c["remote"] for c in client.calls] == ["sh -s -- root", "sh -s -- deploy"]
    root_script, deploy_script = (c["stdin"] for c in client.calls)
    assert own.body in root_script and deploy.body not in root_script
    assert deploy.body in deploy_script and own.body not in deploy_script
    assert all(c["limit"] == 7.0 for c in client.calls)
    assert all(own.body not in c["remote"] for c in client.calls)  # keys on stdin only


async def test_one_user_gets_both_keys_and_a_non_root_login_uses_sudo(
        keys: tuple[PublicKey, PublicKey]) -> None:
    own, deploy = keys
    client = FakeSshClient(ok("authorized_keys unchanged\n"))
    changed = await install_keys(client, "admin", own, "admin", deploy,
                                 command_timeout=7.0, deadline=NO_DEADLINE)
    assert changed is False
    assert [c["remote"] for c in client.calls] == ["sudo -n sh -s -- admin"]
    assert own.body in client.calls[0]["stdin"] and deploy.body in client.calls[0]["stdin"]


async def test_a_failed_installation_names_the_user(keys: tuple[PublicKey, PublicKey]) -> None:
    own, deploy = keys
    refused = SshError(SshErrorKind.COMMAND, "remote command failed with 4: refusing to "
                       "install SSH keys for deploy: /home/deploy/.ssh is a symlink")
    client = FakeSshClient(ok("authorized_keys changed\n"), refused)
    result = await install_keys(client, "root", own, "deploy", deploy,
                                command_timeout=7.0, deadline=NO_DEADLINE)
    assert isinstance(result, out.Outcome) and result.error is not None
    assert result.error.kind is ErrorKind.DEPLOY_KEY_FAILED
    assert result.error.message.startswith("installing SSH keys for user deploy failed: ")
    assert "is a symlink" in result.error.message
