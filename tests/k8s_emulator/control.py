"""`/_emulator/*` control endpoints: faults, stats, reset, compaction, dumps, logs, outages.

    GET    /_emulator/stats               request counts by verb, resource and code
    GET    /_emulator/faults              active fault rules
    POST   /_emulator/faults              add a rule (or a list of rules), see faults.FaultRule
    DELETE /_emulator/faults              remove all rules
    POST   /_emulator/reset               drop all objects, events, logs, faults and stats
    POST   /_emulator/compact             forget watch history: older resourceVersions -> 410
    GET    /_emulator/objects             dump objects (?resource=jobs&namespace=ns)
    POST   /_emulator/logs                {"namespace","pod","text","container"?,"append"?}
    POST   /_emulator/down                {"seconds": N}: stop listening, back after N seconds
    POST   /_emulator/controller          change auto controller settings (ControllerConfig)
    POST   /_emulator/config              {"window","bookmark_interval",
                                           "default_watch_timeout","gc_delay"}
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .controller import ControllerConfig
from .faults import FaultRule
from .httpserver import Connection, Request, Response
from .status import ApiError
from .store import dumps

if TYPE_CHECKING:
    from .core import EmulatorCore


class LogBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str
    pod: str
    text: str
    container: str | None = None
    append: bool = False


class DownBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(1.0, gt=0, description="outage length (default 1 s)")


class ConfigBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: int | None = Field(None, ge=1)
    bookmark_interval: float | None = Field(None, gt=0)
    default_watch_timeout: float | None = Field(None, ge=0)
    gc_delay: float | None = Field(None, ge=0)


def _ok(body: Any, status: int = 200) -> Response:
    return Response(status, dumps(body))


def _fail(status: int, message: str) -> Response:
    return Response(status, dumps({"error": message}))


class Control:
    def __init__(self, core: EmulatorCore) -> None:
        self.core = core

    def handle(self, req: Request, conn: Connection) -> Response:
        action = req.path[len("/_emulator/"):].strip("/")
        try:
            body = json.loads(req.body) if req.body.strip() else {}
            return self._route(action, req, body)
        except ValidationError as exc:
            return _fail(400, str(exc))
        except (ValueError, KeyError) as exc:
            return _fail(400, f"bad control request: {exc!r}")
        except ApiError as err:
            return Response(err.code, dumps(err.status()))

    def _route(self, action: str, req: Request, body: Any) -> Response:
        core, method = self.core, req.method
        if action == "stats" and method == "GET":
            return _ok(core.stats.snapshot())
        if action == "faults":
            if method == "GET":
                return _ok(core.faults.describe())
            if method == "DELETE":
                core.faults.clear()
                return _ok({"cleared": True})
            if method == "POST":
                rules = body if isinstance(body, list) else [body]
                added = [core.faults.add(FaultRule.model_validate(r)) for r in rules]
                return _ok([r.model_dump() for r in added], 201)
        if action == "reset" and method == "POST":
            core.reset()
            return _ok({"resourceVersion": str(core.store.rv)})
        if action == "compact" and method == "POST":
            return _ok({"resourceVersion": str(core.compact())})
        if action == "objects" and method == "GET":
            return _ok(core.objects(req.query.get("resource"), req.query.get("namespace")))
        if action == "logs" and method == "POST":
            log = LogBody.model_validate(body)
            core.registry.set_log(log.namespace, log.pod, log.text, log.container, log.append)
            return _ok({"ok": True})
        if action == "down" and method == "POST":
            down = DownBody.model_validate(body)
            # Go down just after this answer has left.
            asyncio.get_running_loop().call_later(
                0.05, lambda: core.spawn(core.down(down.seconds)))
            return _ok({"down_for": down.seconds})
        if action == "controller" and method == "POST":
            current = core.controller.config.model_dump()
            core.controller.configure(ControllerConfig.model_validate({**current, **body}))
            return _ok(core.controller.config.model_dump())
        if action == "config" and method == "POST":
            core.configure(**ConfigBody.model_validate(body).model_dump())
            return _ok({"ok": True})
        return _fail(404, f"no control endpoint {method} /_emulator/{action}")
