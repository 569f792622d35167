"""A minimal HTTP/1.1 server for /metrics, /healthz and /readyz (GET only).

Small on purpose: the dispatcher needs three read-only endpoints, and this keeps a web
framework out of the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

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
