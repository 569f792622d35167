"""HTTP endpoints: a minimal HTTP/1.1 server for /healthz and /readyz (GET only), and
/metrics served by prometheus-client's own exposition server.

The health server is small on purpose (two read-only endpoints, no web framework in the
image). /metrics uses prometheus-client so content negotiation (text 0.0.4 or OpenMetrics by
`Accept`), gzip by `Accept-Encoding`, HEAD and `name[]` filtering behave exactly as
Prometheus expects. It runs in a thread of its own: collecting reads only in-memory values
(the Redis-derived ones are refreshed by queue_state.py), so a scrape never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]  # status, content type, body
log = logging.getLogger(__name__)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
            500: "Internal Server Error"}


async def serve(host: str, port: int, routes: dict[str, Handler]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path in routes:
                try:
                    status, ctype, body = await routes[path]()
                except Exception as exc:
                    log.exception("handler failed", extra={"path": path})
                    status, ctype, body = 500, "text/plain", f"{exc}\n".encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)


class MetricsServer(Protocol):
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> MetricsServer:
    """Start /metrics (any path answers, as prometheus-client does); stop with close_metrics."""
    server, _thread = start_http_server(port, host, registry)
    return server


def close_metrics(server: MetricsServer) -> None:
    server.shutdown()
    server.server_close()
