"""The kubelet's container-log endpoint, for ``kubectl logs``."""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.node.constants import HOST_IP

if TYPE_CHECKING:  # the agent imports this module
    from tests.support.node.agent import Node

log = logging.getLogger(__name__)


class LogServer:
    """The one kubelet endpoint the tests use through the API server: ``GET
    /containerLogs/<namespace>/<pod>/<container>`` (``kubectl logs``, with ``tailLines``,
    ``limitBytes`` and ``follow``), on 127.0.0.1 at the port the Node's status announces.
    The API server has no kubelet client certificate here, so it neither presents one nor
    checks this server's; the server asks for none either (everything stays on 127.0.0.1)."""

    def __init__(self, node: Node, cert: Path, key: Path) -> None:
        self.node = node
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._server = http.server.ThreadingHTTPServer((HOST_IP, 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"{node.name}-logs")
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        node = self.node

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("node %s logs: " + fmt, node.name, *args)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                query = urllib.parse.parse_qs(url.query)
                path, live = (node.log_file(parts[1], parts[2])
                              if len(parts) == 4 and parts[0] == "containerLogs"
                              else (None, False))
                if path is None or not path.exists():
                    self.send_error(404, "no such container log on this node")
                    return
                data = path.read_bytes()
                offset = len(data)
                if tail := query.get("tailLines"):
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-int(tail[0]):]) if int(tail[0]) else b""
                if limit := query.get("limitBytes"):
                    data = data[:int(limit[0])]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(data)
                while query.get("follow") == ["true"] and live:
                    time.sleep(0.2)
                    _, live = node.log_file(parts[1], parts[2])
                    with path.open("rb") as stream:
                        stream.seek(offset)
                        more = stream.read()
                    offset += len(more)
                    self.wfile.write(more)
                    self.wfile.flush()

        return Handler


