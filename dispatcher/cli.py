"""Command line for SREs and the Scheduler's developers.

    python -m dispatcher run                      # the service
    python -m dispatcher enqueue srv-1 [--recovery|--force-reinstall] [--plan]
    python -m dispatcher status                   # queue / processing / waiting / dead-letter
    python -m dispatcher results [-n 10]
    python -m dispatcher dead-letter [-n 10] [--requeue]
    python -m dispatcher check                    # Redis and the Kubernetes API answer?
    python -m dispatcher history srv-1 [-n 20] [--json]   # a server's runs (PostgreSQL)
    python -m dispatcher show-run <request-id> [--json]   # one run in full
    python -m dispatcher settings                 # every setting, its variable and default
    python -m dispatcher schemas [--out DIR]      # JSON Schemas of message and result
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import RedisError

from contracts.connections import RedisSettings, create_redis
from contracts.logs import configure_logging
from contracts.messages import InvalidMessage, ProvisionerMessage, parse_message
from contracts.results import ResultEntry
from dispatcher.app import run_dispatcher
from dispatcher.history.commands import add_commands as add_history_commands
from dispatcher.history.settings import HistorySettings
from dispatcher.kube.client import load_configuration
from dispatcher.schemas import write_schemas
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from dispatcher.store.queue import QueueStore, aio

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3  # Redis or the Kubernetes API did not answer (one line on stderr says which)
REDIS_HINT = ("check REDIS_URL, REDIS_PASSWORD, that Redis is up, and that a NetworkPolicy "
              "lets this pod reach it")
API_HINT = ("check DISPATCHER_KUBECONFIG (or the in-cluster ServiceAccount), that the API "
            "server is up, and that a NetworkPolicy lets this pod reach it")


class Unreachable(Exception):
    """A service the command needs did not answer: one line naming it, its URL and what to
    check; never a traceback."""

    def __init__(self, service: str, url: str, error: BaseException | str, hint: str) -> None:
        detail = error if isinstance(error, str) else (str(error) or type(error).__name__)
        first = detail.splitlines()[0].rstrip(". ") if detail.strip() else type(error).__name__
        super().__init__(f"cannot reach {service} at {url}: {first}; {hint}")


def _redis_url() -> str:
    try:
        return RedisSettings().url
    except ValidationError:
        return "REDIS_URL (invalid)"


def _settings_error(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        variable = field if field.isupper() else f"{prefix}{field}".upper()
        # Where inside a structured setting (e.g. the variable of a secret reference);
        # names only, the offending value is deliberately not echoed: it may be a secret.
        inner = ".".join(str(part) for part in err["loc"][1:])
        where = f" ({inner})" if inner else ""
        lines.append(f"invalid setting {variable}{where}: {err['msg']}")
    return "\n".join(lines)


_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([a-z0-9_]+)"')


def _load(kind: type[Any], prefix: str) -> Any:
    try:
        return kind()
    except ValidationError as exc:
        print(_settings_error(exc, prefix), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except SettingsError as exc:
        # A structured setting (a JSON object or list) that is not JSON; the parser's text
        # may quote the value, so only the variable is named.
        found = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        variable = f"{prefix}{found.group(1)}".upper() if found else f"a {prefix}* setting"
        print(f"invalid setting {variable}: not valid JSON (a JSON object or list is "
              "expected)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(_: argparse.Namespace) -> int:
    settings = _load(DispatcherSettings, "DISPATCHER_")
    template = _load(JobTemplateSettings, "DISPATCHER_JOB_")
    redis_settings = _load(RedisSettings, "REDIS_")
    history = _load(HistorySettings, "DISPATCHER_HISTORY_")
    configure_logging("dispatcher", settings.log_level)
    # What start-up loaded (the modules, the Kubernetes client's models, the settings)
    # lives as long as the process. Frozen out of the cyclic collector's reach, a full
    # collection scans only what the work created since: tens of milliseconds of pause
    # less, at any instant of a burst or of an idle message's path.
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(run_dispatcher(settings, template, redis_settings,
                                   history_settings=history))
    except Exception as exc:
        # A kubeconfig that cannot be loaded stops the service at start (an unreachable API
        # server or Redis does not: the service retries and reports not ready).
        if type(exc).__module__ != "kubernetes.config.config_exception":
            raise
        raise Unreachable("the Kubernetes API", settings.kubeconfig or
                          "the in-cluster configuration or KUBECONFIG", exc, API_HINT) from None
    return 0


async def _enqueue(args: argparse.Namespace) -> int:
    redis_settings = _load(RedisSettings, "REDIS_")
    fields: dict[str, Any] = {"server_handle": args.server_handle,
                              "force_reinstall": args.force_reinstall,
                              "is_recovery": args.recovery,
                              "enqueued_at": datetime.now(UTC).isoformat()}
    if args.plan:  # only when asked: a dispatcher that does not know the field refuses it
        fields["plan"] = True
    if args.request_id:
        fields["request_id"] = args.request_id
    try:
        message = parse_message(json.dumps(fields)).with_identity()
    except InvalidMessage as exc:
        print(f"not enqueued: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    redis = create_redis(redis_settings)
    try:
        await aio(redis.lpush(redis_settings.keys.queue, message.to_json()))
    finally:
        await redis.aclose()
    print(json.dumps({"enqueued": json.loads(message.to_json()),
                      "queue": redis_settings.keys.queue}))
    return 0


async def _status(_: argparse.Namespace) -> int:
    redis_settings = _load(RedisSettings, "REDIS_")
    redis = create_redis(redis_settings)
    try:
        store = QueueStore(redis, redis_settings.keys, "cli")
        depths = await store.depths()
        slots = await store.slots()
    finally:
        await redis.aclose()
    print(json.dumps({
        "queue": depths.queue, "processing": depths.processing, "waiting": depths.waiting,
        "dead_letter": depths.dead_letter, "jobs_in_flight": depths.in_flight,
        "oldest_in_flight_seconds": round(depths.oldest_in_flight_seconds, 1),
        "oldest_claim_seconds": round(depths.oldest_claim_seconds, 1),
        "jobs_in_flight_by_action": {str(a): n for a, n in depths.in_flight_by_action.items()},
        "waiting_for_action_cap": {str(a): n for a, n in depths.capped.items()},
        "servers_in_flight": {s.handle: {"request_id": s.request_id, "job_name": s.job_name,
                                         "state": s.state, "action": s.action}
                              for s in slots},
    }, indent=2))
    return 0


async def _results(args: argparse.Namespace) -> int:
    redis_settings = _load(RedisSettings, "REDIS_")
    redis = create_redis(redis_settings)
    try:
        entries = await aio(redis.lrange(redis_settings.keys.results, 0, args.count - 1))
    finally:
        await redis.aclose()
    for raw in entries:
        print(ResultEntry.model_validate_json(raw).model_dump_json(exclude_none=True))
    return 0


async def _dead_letter(args: argparse.Namespace) -> int:
    redis_settings = _load(RedisSettings, "REDIS_")
    keys = redis_settings.keys
    redis = create_redis(redis_settings)
    try:
        if not args.requeue:
            for raw in await aio(redis.lrange(keys.dead_letter, 0, args.count - 1)):
                print(raw.decode(errors="backslashreplace"))
            return 0
        moved, kept = 0, []
        for _ in range(args.count):
            # Oldest first; the payload goes back as it came, to be validated again.
            raw = await aio(redis.rpop(keys.dead_letter))
            if raw is None:
                break
            entry = json.loads(raw)
            if entry.get("payload_truncated"):
                kept.append(raw)  # only a prefix was kept (oversize): nothing to retry
                continue
            await aio(redis.lpush(keys.queue, entry["payload"]))
            moved += 1
        for raw in reversed(kept):
            await aio(redis.rpush(keys.dead_letter, raw))
        print(json.dumps({"requeued": moved, "kept_truncated": len(kept)}))
        return 0
    finally:
        await redis.aclose()


async def _check_redis() -> str:
    redis_settings = _load(RedisSettings, "REDIS_")
    redis = create_redis(redis_settings)
    try:
        await aio(redis.ping())
    finally:
        await redis.aclose()
    return f"Redis at {redis_settings.url} answers"


def _check_api() -> str:
    settings = _load(DispatcherSettings, "DISPATCHER_")
    where = settings.kubeconfig or "the in-cluster configuration or KUBECONFIG"
    try:
        configuration = load_configuration(settings.kubeconfig, pool_size=1)
    except (ConfigException, OSError, ValueError) as exc:
        raise Unreachable("the Kubernetes API", where, exc, API_HINT) from None
    configuration.retries = 0
    with kubernetes.client.ApiClient(configuration) as api:
        try:
            kubernetes.client.BatchV1Api(api).list_namespaced_job(
                settings.namespace, limit=1, _request_timeout=settings.api_timeout_seconds)
        except ApiException as exc:
            raise Unreachable("the Kubernetes API", configuration.host,
                              f"HTTP {exc.status} {exc.reason} listing Jobs in "
                              f"{settings.namespace}", API_HINT) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unreachable("the Kubernetes API", configuration.host,
                              getattr(exc, "reason", None) or exc, API_HINT) from None
    return f"Kubernetes API at {configuration.host} answers (Jobs in {settings.namespace})"


def cmd_check(_: argparse.Namespace) -> int:
    """Every dependency, one line each; exit 3 if any does not answer."""
    failed = False
    checks: tuple[Callable[[], str], ...] = (lambda: asyncio.run(_check_redis()), _check_api)
    for check in checks:
        try:
            print(f"ok: {check()}")
        except Unreachable as exc:
            print(f"FAIL: {exc}")
            failed = True
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            print(f"FAIL: {Unreachable('Redis', _redis_url(), exc, REDIS_HINT)}")
            failed = True
    return EXIT_UNREACHABLE if failed else 0


def _is_redis_error(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError | TimeoutError)


def cmd_settings(_: argparse.Namespace) -> int:
    rows = []
    for kind, prefix in ((DispatcherSettings, "DISPATCHER_"), (JobTemplateSettings,
                         "DISPATCHER_JOB_"), (RedisSettings, "REDIS_"),
                         (HistorySettings, "DISPATCHER_HISTORY_")):
        for name, field in kind.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            default: Any = field.default
            if field.default_factory is not None:
                default = ("<computed>" if name == "replica_id"
                           else field.get_default(call_default_factory=True))
            rows.append({"variable": alias or f"{prefix}{name}".upper(),
                         "default": default, "description": field.description or ""})
    print(json.dumps(rows, indent=2, default=str))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    for path in write_schemas(Path(args.out) if args.out else None):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dispatcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the dispatcher service").set_defaults(func=cmd_run)
    enqueue = sub.add_parser("enqueue", help="push one ProvisionerMessage")
    enqueue.add_argument("server_handle")
    mode = enqueue.add_mutually_exclusive_group()
    mode.add_argument("--force-reinstall", action="store_true")
    mode.add_argument("--recovery", action="store_true")
    enqueue.add_argument("--plan", action="store_true",
                         help="ask what the play would change (check mode) instead of a run")
    enqueue.add_argument("--request-id")
    enqueue.set_defaults(func=lambda a: asyncio.run(_enqueue(a)))
    sub.add_parser("status", help="queue depths and servers in flight").set_defaults(
        func=lambda a: asyncio.run(_status(a)))
    results = sub.add_parser("results", help="newest result entries")
    results.add_argument("-n", "--count", type=int, default=10)
    results.set_defaults(func=lambda a: asyncio.run(_results(a)))
    dead = sub.add_parser("dead-letter", help="show (or requeue) dead-lettered messages")
    dead.add_argument("-n", "--count", type=int, default=10)
    dead.add_argument("--requeue", action="store_true",
                      help="move the oldest N back onto the queue")
    dead.set_defaults(func=lambda a: asyncio.run(_dead_letter(a)))
    sub.add_parser("check", help="do Redis and the Kubernetes API answer?").set_defaults(
        func=cmd_check)
    add_history_commands(sub)
    sub.add_parser("settings", help="list every setting").set_defaults(func=cmd_settings)
    schemas = sub.add_parser("schemas", help="write the JSON Schemas")
    schemas.add_argument("--out")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as exc:
        # The Redis commands (enqueue, status, results, dead-letter): a connection,
        # authentication or timeout failure is one line, not a traceback.
        if args.command == "run" or not _is_redis_error(exc):
            raise
        print(Unreachable("Redis", _redis_url(), exc, REDIS_HINT), file=sys.stderr)
        return EXIT_UNREACHABLE


__all__ = ["ProvisionerMessage", "main"]
