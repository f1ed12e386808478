"""Loopback helpers shared by the tests: free ports, and a small web server for image fetches."""

from __future__ import annotations

import http.server
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ImageHost:
    """Serves ``files`` (path -> (status, body[, headers])) on a loopback address.

    A status of ``"hang"`` waits ``hang`` seconds and then sends an empty 200 (a fetch timeout);
    unknown paths get ``default``. ``hits`` counts requests; ``seen_headers`` (a list), when
    given, collects each request's headers.
    """

    def __init__(
        self,
        files,
        host: str = "127.0.0.1",
        seen_headers: list | None = None,
        default=(404, b"<html>not found</html>"),
        hang: float = 3.0,
    ):
        files = dict(files)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits += 1
                if seen_headers is not None:
                    seen_headers.append(dict(self.headers))
                status, body, *extra = files.get(self.path.split("?")[0], default)
                if status == "hang":
                    time.sleep(hang)
                    status, body = 200, b""
                try:
                    self.send_response(status)
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.hits = 0
        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://{host}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
