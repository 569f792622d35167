"""Label and annotation keys, label values and secret references that a real API server
refuses (or that silently break every run) are refused when the dispatcher's settings load,
naming the setting, the key and the rule: the dispatcher does not start with them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from contracts.messages import Action
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.support.dispatch import REPO

pytestmark = pytest.mark.unit

LONG_PREFIX = ".".join(["a" * 63] * 4) + ".b"  # 254 characters: one past a DNS subdomain


@pytest.mark.parametrize("field", ["annotations", "pod_annotations"])
@pytest.mark.parametrize(("key", "rule"), [
    ("bad key", "not a qualified name"),
    ("owner/", "not a qualified name"),
    ("x" * 64, "1-63"),
    ("-lead", "starting and ending alphanumeric"),
    ("Example_Com/x", "prefix before '/' must be a DNS subdomain"),
    (f"{LONG_PREFIX}/x", "at most 253 characters"),
])
def test_an_annotation_key_the_api_refuses_is_refused(field: str, key: str, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobTemplateSettings(**{field: {key: "v"}})
    text = str(caught.value)
    assert field in text and repr(key) in text and rule in text, text


@pytest.mark.parametrize("field", ["labels", "pod_labels"])
@pytest.mark.parametrize(("labels", "rule"), [
    ({"bad key": "v"}, "not a qualified name"),
    ({"Example.com/x": "v"}, "DNS subdomain"),  # labels, unlike annotations: lower case only
    ({"team": "platform ops"}, "label value 'platform ops'"),
    ({"team": "v" * 64}, "at most 63"),
])
def test_a_label_the_api_refuses_is_refused(field: str, labels: dict[str, str],
                                            rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobTemplateSettings(**{field: labels})
    assert field in str(caught.value) and rule in str(caught.value), str(caught.value)


def test_annotations_are_limited_to_256_kib_in_all() -> None:
    half = "v" * (128 * 1024)
    with pytest.raises(ValidationError, match="at most 262144"):
        JobTemplateSettings(pod_annotations={"a": half, "b": half})
    JobTemplateSettings(pod_annotations={"a": half, "b": half[:-10]})


def test_keys_the_api_accepts_still_load() -> None:
    template = JobTemplateSettings(
        annotations={"Example.COM/Owner": "x y", "a" * 63: "", f"{'b' * 253}/c": "z"},
        pod_annotations={"karpenter.sh/do-not-disrupt": "true",
                         "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        pod_labels={"example.com/tier": "a.b_c", "empty": ""})
    assert template.pod_labels["empty"] == ""


@pytest.mark.parametrize("ref", [{"secret": "s", "key": ""},
                                 {"secret": "s", "key": "", "optional": False}])
def test_a_required_secret_reference_needs_a_key(ref: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        JobTemplateSettings(secret_env={"SSH_PRIVATE_KEY": ref})
    text = str(caught.value)
    assert "SSH_PRIVATE_KEY" in text and "required secret reference" in text, text
    assert "key is empty" in text or "is empty" in text, text


def test_an_optional_secret_reference_may_leave_its_key_empty() -> None:
    template = JobTemplateSettings(secret_env={
        "REDIS_PASSWORD": {"secret": "s", "key": "", "optional": True}})
    assert template.secret_env["REDIS_PASSWORD"].key == ""
    with pytest.raises(ValidationError, match="Secret's data key"):
        JobTemplateSettings(secret_env={"X": {"secret": "s", "key": "a b", "optional": True}})


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("DISPATCHER_JOB_ANNOTATIONS", '{"bad key": "x"}', "annotation key 'bad key'"),
    ("DISPATCHER_JOB_POD_LABELS", '{"bad key": "x"}', "label key 'bad key'"),
    ("DISPATCHER_JOB_SECRET_ENV", '{"SSH_PRIVATE_KEY": {"secret": "s", "key": ""}}',
     "(SSH_PRIVATE_KEY)"),
])
def test_the_dispatcher_does_not_start_with_them(variable: str, value: str, said: str) -> None:
    """`python -m dispatcher run` exits 2 (configuration) before it reaches Redis or the API,
    naming the variable, the key and the rule."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "REDIS_"))}
    env.update({"PYTHONPATH": str(REPO), "REDIS_URL": "redis://127.0.0.1:1/0",
                "DISPATCHER_KUBECONFIG": "/nonexistent", variable: value})
    done = subprocess.run([sys.executable, "-m", "dispatcher", "run"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"invalid setting {variable}" in done.stderr and said in done.stderr, done.stderr


def test_the_deadline_instant_is_the_dispatchers_to_set() -> None:
    with pytest.raises(ValidationError, match="JOB_DEADLINE_AT"):
        JobTemplateSettings(env={"JOB_DEADLINE_AT": "2030-01-01T00:00:00Z"})


def test_action_caps_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_ACTION_CAPS", '{"reinstall": 2, "recovery": 5}')
    monkeypatch.setenv("DISPATCHER_MAX_IN_FLIGHT", "5")
    settings = DispatcherSettings()
    assert settings.action_caps == {Action.REINSTALL: 2, Action.RECOVERY: 5}


@pytest.mark.parametrize(("caps", "said"), [
    ('{"reinstall": 0}', "between 1 and DISPATCHER_MAX_IN_FLIGHT (10)"),
    ('{"reinstall": 11}', "reinstall is capped at 11"),
    ('{"rebuild": 1}', "rebuild"),
    ('{"reinstall": "two"}', "two"),
    ("reinstall=2", "action_caps"),
])
def test_an_action_cap_that_cannot_hold_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch, caps: str, said: str) -> None:
    monkeypatch.setenv("DISPATCHER_ACTION_CAPS", caps)
    with pytest.raises((ValidationError, SettingsError)) as caught:
        DispatcherSettings()
    assert said in str(caught.value), str(caught.value)
