"""POSTs of already serialised bodies over keep-alive HTTP/1.1 connections, on the event loop.

Job creation is the dispatcher's hot path. Through the generated client it cost, per Job, a
hand-off to a worker thread and back, urllib3's request machinery and http.client's header
parsing (email.parser), which was most of the dispatcher's CPU per Job. Here a create is one
write and one read on a pooled connection of the event loop itself.

Why not httpx, our usual HTTP client: its per-request cost on this path is several times
this module's and shows in the CPU per Job (scripts/bench_dispatcher.py measures it; the
figures are in PERFORMANCE.md). That cost is in httpcore's pool (every pooled connection
checked for expiry through anyio on each request and release), anyio's cancel scopes and
h11's event machinery, none of which the creates need. This module does only what they need:
HTTP/1.1, Content-Length or chunked answers, keep-alive.

What stays the kubernetes package's: the configuration (server URL, CA, client
certificate, TLS options, credentials and their refresh hooks: the Authorization header is
taken from the live configuration for every request, so a 401 reload applies at once) and
the error shape (non-2xx raises its ``ApiException`` with status, reason, body and
headers). A configuration with a proxy keeps using the client's own pool (see
``KubeClient.post``). Failures without an answer raise ``ConnectionError`` (an OSError), as
the thread path's urllib3 errors are treated: no answer, maybe applied.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPHeaderDict

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # a Job or Status object is a few KiB


@dataclass
class PostResponse:
    """The attributes ``ApiException(http_resp=...)`` and the callers read."""

    status: int
    reason: str
    data: bytes
    headers: HTTPHeaderDict = field(default_factory=HTTPHeaderDict)

    def getheaders(self) -> HTTPHeaderDict:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def ssl_context(configuration: client.Configuration) -> tuple[ssl.SSLContext, str]:
    """The TLS settings the client's urllib3 pool would use: (context, server name)."""
    host = urllib.parse.urlsplit(configuration.host).hostname or ""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    assert_hostname = getattr(configuration, "assert_hostname", None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif assert_hostname is False:
        context.check_hostname = False
    name = getattr(configuration, "tls_server_name", None) or \
        (assert_hostname if isinstance(assert_hostname, str) else None) or host
    return context, name


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class AsyncPoster:
    def __init__(self, configuration: client.Configuration,
                 auth_headers: Callable[[], dict[str, str]], user_agent: str,
                 max_idle: int) -> None:
        url = urllib.parse.urlsplit(configuration.host)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._base = url.path.rstrip("/")
        self._netloc = url.netloc
        self._configuration = configuration
        self._ssl: tuple[ssl.SSLContext, str] | None = None
        self._auth_headers = auth_headers
        self._user_agent = user_agent
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: bytes, query: str,
                   limits: tuple[float, float]) -> PostResponse:
        """POST ``body``; non-2xx raises ApiException, no answer raises ConnectionError."""
        target = f"{self._base}{path}" + (f"?{query}" if query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {self._netloc}",
                 "Content-Type: application/json", "Accept: application/json",
                 f"User-Agent: {self._user_agent}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in self._auth_headers().items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        connect, read = limits  # (connect, read) seconds, as the client's _request_timeout
        # No silent resend, even when a pooled connection ends before any answer: the
        # create may have been stored, and only the caller's retry (whose 409 is then
        # checked against our request id) counts it right. Connections the server closed
        # while idle are dropped before use (``usable``).
        conn = await self._acquire(connect)
        try:
            response, keep = await self._exchange(conn, request, read)
        except BaseException:
            conn.close()
            raise
        self._release(conn, keep)
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return response

    async def _acquire(self, connect_timeout: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()
        tls: ssl.SSLContext | None = None
        server_name: str | None = None
        if self._https:
            if self._ssl is None:
                self._ssl = ssl_context(self._configuration)
            tls, server_name = self._ssl
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=tls, server_hostname=server_name,
                    limit=MAX_HEADER_BYTES)
        except TimeoutError:
            raise ConnectionError(f"connecting to {self._netloc} timed out after "
                                  f"{connect_timeout:g}s") from None
        return _Connection(reader, writer)

    def _release(self, conn: _Connection, keep: bool) -> None:
        if keep and conn.usable and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    async def _exchange(self, conn: _Connection, request: bytes, read_timeout: float
                        ) -> tuple[PostResponse, bool]:
        reader = conn.reader
        conn.writer.write(request)
        try:
            async with asyncio.timeout(read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                status, reason, headers = _parse_head(head)
                data = await _read_body(reader, headers)
        except TimeoutError:
            raise ConnectionError(f"no answer from {self._netloc} within "
                                  f"{read_timeout:g}s") from None
        except asyncio.IncompleteReadError as exc:
            where = "in the middle of its answer" if exc.partial else "before answering"
            raise ConnectionError(f"the API server closed the connection {where} (the "
                                  "request may have been applied)") from None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise ConnectionError(f"unreadable answer from the API server: "
                                  f"{type(exc).__name__}") from None
        keep = headers.get("connection", "").lower() != "close"
        return PostResponse(status, reason, data, headers), keep

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, str, HTTPHeaderDict]:
    status_line, _, rest = head.decode("latin-1").partition("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP/1.1 answer: {status_line[:100]!r}")
    headers = HTTPHeaderDict()
    for line in rest.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers.add(name.strip(), value.strip())
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


async def _read_body(reader: asyncio.StreamReader, headers: HTTPHeaderDict) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            length = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if length == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(chunks)
            size += length
            if size > MAX_BODY_BYTES:
                raise ConnectionError("the API server's answer is too large")
            chunks.append(await reader.readexactly(length))
            await reader.readexactly(2)
    length_text = headers.get("content-length")
    if length_text is None:
        raise ConnectionError("the API server's answer has no length (close-delimited "
                              "bodies are not supported)")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise ConnectionError("the API server's answer is too large")
    return await reader.readexactly(length) if length else b""
