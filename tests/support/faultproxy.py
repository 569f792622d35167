"""A fault-injecting HTTPS proxy in front of the real kube-apiserver.

Clients that talk to the proxy see the real API server's answers, except where a test asked
for a fault on the next matching requests:

    proxy.inject(verb="create", resource="jobs", status=500, count=3)
    proxy.inject(verb="create", resource="jobs", status=429, retry_after=1)
    proxy.inject(verb="create", resource="jobs", drop=True, applied=True)  # reply lost
    proxy.inject(verb="watch", resource="jobs", expire=True)   # 410 Gone on the watch
    proxy.inject(verb="create", resource="jobs", delay=0.5)

It terminates TLS with a certificate of the control plane's CA and forwards each request
over a new TLS connection with the request's own ``Authorization`` header, so the API server
authenticates and authorizes the client as it would without the proxy: clients use bearer
tokens (a client certificate cannot pass through). HTTP/1.1 with keep-alive, request bodies
by Content-Length, responses by Content-Length or chunked (watches stream through as they
come). Verbs are the API's: get, list, watch, create, update, patch, delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.support.controlplane import ControlPlane
from tests.support.services import free_port

_RESOURCE = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([^/]+)(/[^/]+)?")


@dataclass
class Fault:
    verb: str | None
    resource: str | None
    count: int = 1
    status: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    drop: bool = False
    applied: bool = False  # with drop: forward the request, then lose its reply
    expire: bool = False  # a watch answered with 410 Gone, as after etcd compaction
    message: str = "injected by the test's fault proxy"

    def matches(self, verb: str, resource: str | None) -> bool:
        return ((self.verb is None or self.verb == verb)
                and (self.resource is None or self.resource == resource))


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def verb_and_resource(self) -> tuple[str, str | None]:
        url = urlsplit(self.target)
        found = _RESOURCE.match(url.path)
        resource = found.group(1) if found else None
        named = bool(found and found.group(2))
        query = parse_qs(url.query)
        method = self.method.upper()
        if method == "GET":
            if query.get("watch", [""])[0].lower() in ("true", "1"):
                verb = "watch"
            else:
                verb = "get" if named else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}.get(method, method.lower())
        return verb, resource


@dataclass
class FaultProxy:
    cp: ControlPlane
    port: int = field(default_factory=free_port)
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def inject(self, verb: str | None = None, resource: str | None = None, *, count: int = 1,
               **fault: object) -> None:
        with self._lock:
            self.faults.append(Fault(verb, resource, count, **fault))  # type: ignore[arg-type]

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def cut(self) -> None:
        """Close every client connection now, open watches included (a network blip)."""
        def close_all() -> None:
            for writer in list(self._open):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(close_all)

    def _take(self, verb: str, resource: str | None) -> Fault | None:
        with self._lock:
            self.seen.append((verb, resource))
            for fault in self.faults:
                if fault.count > 0 and fault.matches(verb, resource):
                    fault.count -= 1
                    return fault
        return None

    # -- serving ------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._open.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                verb, resource = request.verb_and_resource
                fault = self._take(verb, resource)
                if fault and fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault and fault.drop and not fault.applied:
                    return
                if fault and fault.status:
                    await _write_status(writer, fault)
                    continue
                if fault and fault.expire and verb == "watch":
                    await _write_expired_watch(writer)
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection(
                        "127.0.0.1", self.cp.api_port, ssl=self._upstream_tls)
                lost = bool(fault and fault.drop)
                keep = await _forward(request, upstream, writer, self.cp.api_port, lost)
                if lost or not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        except asyncio.CancelledError:
            # Cancelled by stop(). Ending normally keeps Python 3.11's start_server from
            # logging each cancelled connection as an "Exception in callback" traceback,
            # which buried the real failure of a test in its output.
            return
        finally:
            self._open.discard(writer)
            if upstream is not None:
                upstream[1].close()
            writer.close()

    def start(self) -> FaultProxy:
        self.cp.pki.issue("faultproxy", "faultproxy", server=True, ips=["127.0.0.1"],
                          dns=["localhost"])
        self._serve_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._serve_tls.load_cert_chain(str(self.cp.pki.path("faultproxy.crt")),
                                        str(self.cp.pki.path("faultproxy.key")))
        self._upstream_tls = ssl.create_default_context(cafile=str(self.cp.pki.path("ca.crt")))
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._handle, "127.0.0.1", self.port, ssl=self._serve_tls))
            ready.set()
            self._loop.run_forever()
            # Stopped: let the cancelled connections finish before the loop closes.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        def close() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)

    def kubeconfig(self, path: str, token: str, namespace: str) -> str:
        """A kubeconfig that reaches the API server through this proxy with ``token``."""
        with open(path, "w") as out:
            json.dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
                "clusters": [{"name": "proxy", "cluster": {
                    "server": self.server,
                    "certificate-authority": str(self.cp.pki.path("ca.crt"))}}],
                "users": [{"name": "proxy", "user": {"token": token}}],
                "contexts": [{"name": "proxy", "context": {
                    "cluster": "proxy", "user": "proxy", "namespace": namespace}}],
            }, out)
        return path


@contextlib.contextmanager
def fault_proxy(cp: ControlPlane) -> Iterator[FaultProxy]:
    proxy = FaultProxy(cp).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- HTTP/1.1, as much as the Kubernetes clients speak ------------------------------------

async def _read_head(reader: asyncio.StreamReader) -> list[str] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    return raw.decode("latin-1").split("\r\n")[:-2]


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    lines = await _read_head(reader)
    if lines is None:
        return None
    method, target, _ = lines[0].split(" ", 2)
    headers = [(k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:])]
    request = Request(method, target, headers, b"")
    length = int(request.header("content-length") or 0)
    if length:
        request.body = await reader.readexactly(length)
    return request


async def _forward(request: Request, upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                   writer: asyncio.StreamWriter, api_port: int, lose_reply: bool) -> bool:
    """Send ``request`` upstream and its response back; False when the connection must
    close after it."""
    up_reader, up_writer = upstream
    head = [f"{request.method} {request.target} HTTP/1.1"]
    for key, value in request.headers:
        head.append(f"Host: 127.0.0.1:{api_port}" if key.lower() == "host" else
                    f"{key}: {value}")
    up_writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body)
    await up_writer.drain()
    lines = await _read_head(up_reader)
    if lines is None:
        raise ConnectionError("the API server closed the connection")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    if lose_reply:  # applied upstream; the client never hears of it
        return False
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await up_reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            chunk = await up_reader.readexactly(size + 2)
            writer.write(size_line + chunk)
            await writer.drain()
            if size == 0:
                break
    else:
        length = int(headers.get("content-length", "0"))
        writer.write(await up_reader.readexactly(length))
    await writer.drain()
    return headers.get("connection", "").lower() != "close"


async def _write_status(writer: asyncio.StreamWriter, fault: Fault) -> None:
    assert fault.status is not None
    reasons = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               409: "AlreadyExists", 410: "Gone", 422: "Invalid", 429: "TooManyRequests",
               500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Failure", "message": fault.message,
                       "reason": reasons.get(fault.status, "Unknown"),
                       "code": fault.status}).encode()
    head = [f"HTTP/1.1 {fault.status} {reasons.get(fault.status, 'Error')}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if fault.retry_after is not None:
        head.append(f"Retry-After: {fault.retry_after}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def _write_expired_watch(writer: asyncio.StreamWriter) -> None:
    """What the API server streams when the watch's resourceVersion was compacted away."""
    event = json.dumps({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version (injected by the test's fault proxy)",
        "reason": "Expired", "code": 410}}).encode() + b"\n"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n"
                 + f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n")
    await writer.drain()
