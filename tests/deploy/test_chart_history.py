"""The chart's run history wiring: the dispatcher's own database login from a Secret only
(secretKeyRef, never a value), the retention, the PostgreSQL egress of its NetworkPolicy,
the commands in NOTES, and the schema of the values."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from dispatcher.history.settings import HistorySettings
from tests.support.chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    container_env,
    plain_env,
    render,
)

pytestmark = pytest.mark.unit

FULL = f"{RELEASE}-infra-service"


def env_by_name(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container_env(render(values).one("Deployment"))}


def test_the_login_comes_from_a_secret_and_the_retention_from_values() -> None:
    env = env_by_name({"dispatcher": {"history": {
        "retentionDays": 30,
        "databaseUrl": {"secret": "dispatcher-db", "key": "url", "optional": False}}}})
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "dispatcher-db", "key": "url", "optional": False}
    assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": FULL, "key": "history-database-password", "optional": True}
    for name in ("DATABASE_URL", "DATABASE_PASSWORD"):
        assert "value" not in env[name]
    assert env["DISPATCHER_HISTORY_RETENTION_DAYS"]["value"] == "30"
    # Every variable the chart sets is a setting the dispatcher reads.
    names = {f.validation_alias or f"DISPATCHER_HISTORY_{n}".upper()
             for n, f in HistorySettings.model_fields.items()}
    assert {n for n in env if n.startswith("DISPATCHER_HISTORY_")} <= names


def test_by_default_the_key_is_optional_so_a_release_without_it_still_dispatches() -> None:
    env = env_by_name()
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["DISPATCHER_HISTORY_RETENTION_DAYS"]["value"] == "90"


def test_turned_off_the_dispatcher_gets_no_database_at_all() -> None:
    values = {"dispatcher": {"history": {"enabled": False}},
              "networkPolicy": {"enabled": True}}
    rendered = render(values)
    env = plain_env(rendered.one("Deployment"))
    names = {e["name"] for e in container_env(rendered.one("Deployment"))}
    assert not {"DATABASE_URL", "DATABASE_PASSWORD"} & names
    assert not any(n.startswith("DISPATCHER_HISTORY_") for n in env)
    assert "python -m dispatcher history" not in rendered.notes
    policy = rendered.one("NetworkPolicy", "infra-service-dispatcher")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert 5432 not in ports


def test_the_dispatcher_may_reach_postgresql_when_the_history_is_on() -> None:
    rendered = render({"networkPolicy": {"enabled": True},
                       "database": {"url": "postgresql://infra@db:6543/infra"}})
    policy = rendered.one("NetworkPolicy", "infra-service-dispatcher")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert 6543 in ports


def test_notes_name_the_commands() -> None:
    notes = render().notes
    exec_ = f"kubectl -n {NAMESPACE} exec deployment/{FULL} -- python -m dispatcher"
    assert f"{exec_} history <server-handle>" in notes
    assert f"{exec_} show-run <request-id>" in notes
    assert "kept 90 days" in notes


def test_the_schema_checks_the_history_values() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    ok = {"dispatcher": {"history": {"enabled": True, "retentionDays": 7,
                                     "pruneIntervalSeconds": 600,
                                     "databaseUrl": {"secret": "db", "key": "url"}}}}
    assert validator.is_valid(ok)
    for bad in ({"retentionDays": 0}, {"retentionDays": "90"}, {"pruneIntervalSeconds": 0},
                {"databaseUrl": "postgresql://u:pw@db/infra"}, {"password": "x"},
                {"databaseUrl": {"secret": "db", "key": ""}}):
        assert not validator.is_valid({"dispatcher": {"history": bad}}), bad
