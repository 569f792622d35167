"""The Time4VPS user API as a real HTTP server on 127.0.0.1, for tests and the demo.

Serves the endpoints the runner uses (reinstall, task polling) plus server details and OS
list, with the provider's error shapes (``{"error": ["wronglogin"]}``, ``Invalid task
ID``) and scriptable failures: 5xx answers, slow answers, non-JSON bodies. A reinstall
task reports "pending" for ``pending_polls`` polls, then completes, and ``on_reinstall``
runs when it completes (tests use it to really change the host, as a reinstall would).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    authorized: bool
    body: dict[str, Any] | None


@dataclass
class ProviderBehaviour:
    """What the fake provider does; tests change it between runs."""

    username: str = "t4v-user"
    password: str = "t4v-password-secret"
    pending_polls: int = 2
    reinstall_status: int = 200          # e.g. 502 for a server error
    reinstall_delay: float = 0.0         # seconds before answering (slow answer)
    poll_status: int = 200
    non_json: bool = False               # answer an HTML page instead of JSON
    invalid_task: bool = False           # polls answer "Invalid task ID"
    on_reinstall: Callable[[str, dict[str, Any]], None] | None = None


@dataclass
class ProviderApi:
    port: int
    behaviour: ProviderBehaviour
    requests: list[Recorded] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def reset(self, **changes: Any) -> None:
        with self.lock:
            self.behaviour = ProviderBehaviour(**changes)
            self.requests.clear()
            self.tasks.clear()


def _handler(api: ProviderApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any, *, raw: str | None = None) -> None:
            body = (raw if raw is not None else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            b = api.behaviour
            expected = base64.b64encode(f"{b.username}:{b.password}".encode()).decode()
            return self.headers.get("Authorization", "") == f"Basic {expected}"

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            authorized = self._authorized()
            with api.lock:
                api.requests.append(Recorded(method, self.path, authorized, body))
                b = api.behaviour
            if b.non_json:
                self._send(502, None, raw="<html><body>Bad Gateway</body></html>")
                return
            if not authorized:
                self._send(401, {"error": ["wronglogin"]})
                return
            path = self.path.removeprefix("/api/").rstrip("/")
            if method == "POST" and (m := re.fullmatch(r"server/(\w+)/reinstall", path)):
                self._reinstall(m.group(1), body or {}, b)
            elif method == "GET" and (m := re.fullmatch(r"server/(\w+)/task/(\w+)", path)):
                self._task(m.group(1), m.group(2), b)
            elif method == "GET" and (m := re.fullmatch(r"server/(\w+)", path)):
                self._send(200, {"id": int(m.group(1)) if m.group(1).isdigit() else m.group(1),
                                 "status": "Active", "os": "debian-12"})
            elif method == "GET" and re.fullmatch(r"server/\w+/oses", path):
                self._send(200, [{"os": "debian-12", "title": "Debian 12"}])
            else:
                self._send(404, {"error": ["Not found"]})

        def _reinstall(self, server_id: str, body: dict[str, Any], b: ProviderBehaviour) -> None:
            if b.reinstall_delay:
                time.sleep(b.reinstall_delay)
            if b.reinstall_status >= 500:
                self._send(b.reinstall_status, {"error": ["Internal error, try again later"]})
                return
            if "os" not in body:
                self._send(400, {"error": ["os is required"]})
                return
            with api.lock:
                task_id = str(1000 + len(api.tasks))
                api.tasks[task_id] = {"server_id": server_id, "polls": 0, "body": body}
            self._send(200, {"task_id": int(task_id)})

        def _task(self, server_id: str, task_id: str, b: ProviderBehaviour) -> None:
            if b.poll_status >= 500:
                self._send(b.poll_status, {"error": ["Internal error, try again later"]})
                return
            with api.lock:
                task = api.tasks.get(task_id)
            if b.invalid_task or task is None or task["server_id"] != server_id:
                self._send(400, {"error": ["Invalid task ID"]})
                return
            task["polls"] += 1
            done = task["polls"] > b.pending_polls
            if done and not task.get("hook_ran"):
                task["hook_ran"] = True
                if b.on_reinstall:
                    b.on_reinstall(server_id, task["body"])
            self._send(200, {
                "name": "reinstall",
                "activated": "2026-01-01 10:00:00",
                "assigned": "2026-01-01 10:00:01",
                "completed": "2026-01-01 10:05:00" if done else None,
                "results": "OS reinstalled" if done else "",
            })

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


@contextlib.contextmanager
def provider_api(behaviour: ProviderBehaviour | None = None) -> Iterator[ProviderApi]:
    api = ProviderApi(0, behaviour or ProviderBehaviour())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.port = server.server_address[1]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
