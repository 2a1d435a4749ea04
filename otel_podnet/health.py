"""``--health-address``: ``/healthz`` (liveness) and ``/readyz`` (readiness) for the kubelet.

Live while the collection loop keeps turning (a collection within the last three
intervals); ready once the programs are attached and a first snapshot was taken.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from logging import getLogger

from .settings import ConfigError

_logger = getLogger(__name__)


class HealthState:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ready = False
        self.last_collection = time.monotonic()

    def collected(self) -> None:
        self.ready = True
        self.last_collection = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self.last_collection < max(3 * self.interval, 30.0)


class HealthServer:
    def __init__(self, address: tuple[str, int], state: HealthState) -> None:
        def make_handler() -> type[BaseHTTPRequestHandler]:
            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    if self.path == "/healthz":
                        ok, body = state.live(), "live" if state.live() else "collection loop stalled"
                    elif self.path == "/readyz":
                        ok, body = state.ready, "ready" if state.ready else "starting"
                    else:
                        self.send_error(404)
                        return
                    data = (body + "\n").encode()
                    self.send_response(200 if ok else 503)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

                def log_message(self, format: str, *args: object) -> None:
                    pass

            return Handler

        try:
            self._server = ThreadingHTTPServer(address, make_handler())
        except OSError as exc:
            raise ConfigError(f"--health-address {address[0]}:{address[1]}: cannot listen ({exc.strerror})") from exc
        # serve_forever() wakes every 0.5 s to look for shutdown(); this thread sleeps
        # until a request or close() (a byte on the pipe) arrives.
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="health", daemon=True)
        self._thread.start()
        _logger.info("health endpoints on %s:%d (/healthz, /readyz)", *address)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._server, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        return
                    self._server.handle_request()  # the listener is readable: accepts at once

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)
        self._server.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
