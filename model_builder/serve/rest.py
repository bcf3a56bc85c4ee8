"""The REST port: model status (what Kubernetes probes read) and Prometheus metrics.

Only the read-only endpoints probes and scrapers use; predictions go over gRPC.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable

_STATUS = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?/?$")


def start(
    host: str,
    port: int,
    status_json: Callable[[str, int | None, str | None], tuple[int, str]],
    metrics_path: str | None,
    metrics_text: Callable[[], str],
) -> http.server.ThreadingHTTPServer:
    """Serves GET /v1/models/NAME[/versions/N|/labels/L] and the metrics path in a daemon thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            match = _STATUS.match(path)
            if match:
                name, version, label = match.groups()
                code, body = status_json(name, int(version) if version else None, label)
                self._send(code, body, "application/json")
            elif metrics_path and path == metrics_path:
                self._send(200, metrics_text(), "text/plain; version=0.0.4")
            else:
                self._send(
                    404, '{ "error": "Malformed request: GET ' + path.replace('"', "") + '" }', "application/json"
                )

        def _send(self, code: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # probes every few seconds would flood the log
            return

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server
