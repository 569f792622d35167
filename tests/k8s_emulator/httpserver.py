"""A small HTTP/1.1 server on asyncio protocols, made for speed and for breaking on purpose.

It parses requests (Content-Length or chunked bodies, keep-alive, pipelining), answers
plain responses synchronously when the handler can, streams chunked responses for watches
and followed logs, and can abort a connection without answering or stop listening
altogether. Much cheaper per request than a general framework, which matters because the
client under test and the emulator often share one process and one GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class Drop(Exception):
    """Raised by a handler to close the connection without answering."""


Handler = Callable[[Request, "Connection"], "Response | Awaitable[Response | None]"]

_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                          time.gmtime(now)).encode())
    return _date_cache[1]


def _head(status: int, headers: dict[str, str], content_type: str, extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, "Unknown").encode()),
             b"Content-Type: " + content_type.encode() + b"\r\n",
             b"Cache-Control: no-cache, private\r\nDate: " + _date() + b"\r\n"]
    lines += [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
    lines.append(extra)
    return b"".join(lines)


class Connection(asyncio.Protocol):
    """One client connection; requests are answered strictly in order."""

    def __init__(self, handler: Handler, connections: set[Connection]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._streaming_keep_alive = True

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self._writable.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            try:
                request = self._parse()
            except ValueError as exc:
                self._fail_parse(str(exc))
                return
            if request is None:
                break
            self.pending.append(request)
        self._run_pending()

    # ---- parsing ----

    def _parse(self) -> Request | None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise ValueError("request header too large")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise ValueError("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, consumed = _dechunk(buf, start)
            if body is None:
                return None
        else:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                raise ValueError("request body too large")
            if len(buf) < start + length:
                return None
            body = bytes(buf[start:start + length])
            consumed = start + length
        del buf[:consumed]
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        path, _, qs = target.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
        return Request(method, target, unquote(path), query, headers, body, keep_alive)

    def _fail_parse(self, reason: str) -> None:
        self.write(Response(400, reason.encode(), "text/plain"), keep_alive=False)

    # ---- dispatch ----

    def _run_pending(self) -> None:
        while self.pending and self.task is None and not self.closed:
            request = self.pending.popleft()
            try:
                result = self.handler(request, self)
            except Drop:
                self.abort()
                return
            if isinstance(result, Response):
                self.write(result, request.keep_alive)
            else:
                self.task = asyncio.ensure_future(self._finish(request, result))

    async def _finish(self, request: Request, result: Awaitable[Response | None]) -> None:
        try:
            response = await result
        except Drop:
            self.abort()
            return
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a handler bug must not wedge the connection
            response = Response(500, f"emulator error: {exc!r}".encode(), "text/plain")
        self.task = None
        if response is not None:
            self.write(response, request.keep_alive)
        elif not self._streaming_keep_alive:
            self.close()
        if not self.closed:
            self._run_pending()

    # ---- writing ----

    def write(self, response: Response, keep_alive: bool = True) -> None:
        if self.closed or self.transport is None:
            return
        extra = b"Content-Length: %d\r\n%s\r\n" % (
            len(response.body), b"" if keep_alive else b"Connection: close\r\n")
        self.transport.write(_head(response.status, response.headers,
                                   response.content_type, extra) + response.body)
        if not keep_alive:
            self.close()

    def start_stream(self, status: int, content_type: str, headers: dict[str, str],
                     keep_alive: bool) -> None:
        self._streaming_keep_alive = keep_alive
        if self.transport is not None and not self.closed:
            self.transport.write(_head(status, headers, content_type,
                                       b"Transfer-Encoding: chunked\r\n\r\n"))

    async def send_chunk(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("client went away")
        if data:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if not self._writable.is_set():
            await self._writable.wait()

    def end_stream(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


def _dechunk(buf: bytearray, start: int) -> tuple[bytes | None, int]:
    body = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n", eol + 2)
            if end < 0:
                return None, 0
            return bytes(body), end + 2
        if len(buf) < eol + 2 + size + 2:
            return None, 0
        body += buf[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
        if len(body) > MAX_BODY_BYTES:
            raise ValueError("request body too large")


class HttpServer:
    """Listens on host:port; `stop_listening` / `listen` model the server going away and
    coming back on the same port."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def listen(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self.handler, self.connections), self.host, self.port,
            reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self, abort_connections: bool = True) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if abort_connections:
            for conn in list(self.connections):
                conn.abort()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
