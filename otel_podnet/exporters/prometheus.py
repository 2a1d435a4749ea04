"""``--exporter prometheus``: ``/metrics`` with one series per pod and attribute set.

The SDK's Prometheus reader serves one Resource only, so the agent serves the newest
snapshot itself: :mod:`.promtext` renders it (Resource attributes as labels), once per
snapshot and format, on the first scrape that asks for it; scrapes until the next snapshot
get the same bytes (and the same gzip of them). Until issue 10 each scrape had
prometheus_client build and format ~17,000 samples (3 to 4 % of a core at 110 pods,
scraped every 10 s); what a scrape gets is unchanged: the format from the Accept header (the
classic text format 0.0.4, or OpenMetrics when asked, as Prometheus does) and gzip when
Accept-Encoding allows it, chosen as prometheus_client chose them.
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import getLogger
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..inventory import PodInfo
from ..resources import env_attributes
from ..samples import Snapshot
from . import ExportStats
from .promtext import ESCAPINGS, Escaping, Exposition, Renderer, label_name, prom_name

__all__ = ["PrometheusExporter", "label_name", "negotiate", "prom_name"]

_logger = getLogger(__name__)

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
TEXT_1_0_0 = "text/plain; version=1.0.0; charset=utf-8"
OPENMETRICS_1_0_0 = "application/openmetrics-text; version=1.0.0; charset=utf-8"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Format:
    openmetrics: bool
    escaping: Escaping
    content_type: str


def _params(media_range: str) -> tuple[str, dict[str, str]]:
    media, *rest = media_range.split(";")
    params = {}
    for p in rest:
        key, sep, value = p.strip().partition("=")
        if sep and key not in params:
            params[key] = value
    return media.strip(), params


def _at_least_1(version: str) -> bool:
    """``version`` >= 1.0.0, compared part by part as numbers (a part that is not a number
    where it matters: no; prometheus_client failed the request)."""
    for part, floor in zip(version.split("."), (1, 0, 0), strict=False):
        try:
            n = int(part)
        except ValueError:
            return False
        if n != floor:
            return n > floor
    return len(version.split(".")) >= 3


def negotiate(accept: str | None) -> Format:
    """The format for an Accept header, as prometheus_client chooses it: the first
    ``application/openmetrics-text`` without a version, or the first of it or ``text/plain``
    with a version of 1.0.0 or later (with the ``escaping`` it names), else the classic
    0.0.4 text. Quality values are not weighed (Prometheus lists its preferences in order)."""
    for media_range in (accept or "").split(","):
        media, params = _params(media_range)
        version = params.get("version", "")
        escaping: Escaping = next((e for e in ESCAPINGS if e == params.get("escaping")), "underscores")
        if media == "application/openmetrics-text":
            if not version:
                return Format(True, "underscores", OPENMETRICS_1_0_0)
            if _at_least_1(version):
                ct = f"application/openmetrics-text; version={version}; charset=utf-8; escaping={escaping}"
                return Format(True, escaping, ct)
        elif media == "text/plain" and version and _at_least_1(version):
            return Format(False, escaping, f"{TEXT_1_0_0}; escaping={escaping}")
    return Format(False, "underscores", TEXT_0_0_4)


def gzip_accepted(accept_encoding: str | None) -> bool:
    return any(e.split(";")[0].strip().lower() == "gzip" for e in (accept_encoding or "").split(","))


class _Snapshots:
    """The newest snapshot and what was rendered of it, shared by the agent's export call
    and the HTTP server's threads."""

    def __init__(self, node_name: str, stats: ExportStats, extra: Mapping[str, str]) -> None:
        self._node = node_name
        self._stats = stats
        self._extra = extra
        self._latest_lock = threading.Lock()  # export() only waits for this one
        self._latest: tuple[Snapshot, dict[str, PodInfo]] | None = None
        self._generation = 0  # of _latest
        self._render_lock = threading.Lock()  # one render at a time; scrapes share it
        self._renderers: dict[Escaping, Renderer] = {}
        self._rendered_for = (0, 0)  # (generation, export failures)
        self._bodies: dict[tuple[Escaping, bool, bool], bytes] = {}

    def update(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        latest = (snapshot, dict(pods))
        with self._latest_lock:
            self._latest = latest
            self._generation += 1

    def body(self, fmt: Format, compress: bool, names: Iterable[str] | None = None) -> bytes:
        with self._render_lock:
            with self._latest_lock:
                latest, generation = self._latest, self._generation
            # the failures are the agent's own metric: a new count makes a new page
            current = (generation, self._stats.failures)
            if current != self._rendered_for:
                self._rendered_for, self._bodies = current, {}
            key = (fmt.escaping, fmt.openmetrics, compress)
            if names is None and key in self._bodies:
                return self._bodies[key]
            # only what was asked for is kept (a scraper asks the same each time): another
            # format renders the snapshot again, from the label strings kept
            exposition = self._render(latest, fmt.escaping)
            if names is not None:
                exposition = exposition.only(names)
            out = exposition.openmetrics() if fmt.openmetrics else exposition.text()
            del exposition
            if compress:
                out = gzip.compress(out, compresslevel=3)  # 7 MB: 13 ms at 3, 54 at 6, 106 at 9
            if names is None:
                self._bodies[key] = out
            return out

    def _render(self, latest: tuple[Snapshot, dict[str, PodInfo]] | None, escaping: Escaping) -> Exposition:
        if latest is None:
            return Exposition(())
        renderer = self._renderers.get(escaping)
        if renderer is None:
            renderer = self._renderers[escaping] = Renderer(self._node, self._extra, escaping)
        return renderer.render(latest[0], latest[1], self._stats.failures)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress does not hold up the agent's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PrometheusExporter:
    def __init__(
        self, node_name: str, stats: ExportStats, address: tuple[str, int], env: Mapping[str, str] | None = None
    ) -> None:
        self._snapshots = _Snapshots(node_name, stats, env_attributes(env))
        host, port = address
        try:
            family, *_, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            server_class = type("_Server", (_Server,), {"address_family": family})
            self._server: WSGIServer = make_server(str(sockaddr[0]), port, self.app, server_class, _QuietHandler)
        except OSError as exc:
            from ..settings import ConfigError

            raise ConfigError(f"--prometheus-address {host}:{port}: cannot listen ({exc.strerror})") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True)
        self._thread.start()
        _logger.info("Prometheus /metrics on %s:%d", host, port)

    def export(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        self._snapshots.update(snapshot, pods)

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """The WSGI application: ``/metrics`` (any path but ``/favicon.ico``), GET and OPTIONS."""
        method = environ["REQUEST_METHOD"]
        headers: list[tuple[str, str]] = []
        if method == "OPTIONS":
            status, headers, body = "200 OK", [("Allow", "OPTIONS,GET")], b""
        elif method != "GET":
            status = "405 Method Not Allowed"
            headers, body = [("Allow", "OPTIONS,GET")], f"# HTTP {status}: {method}; use OPTIONS or GET\n".encode()
        elif environ.get("PATH_INFO") == "/favicon.ico":
            status, body = "200 OK", b""
        else:
            status = "200 OK"
            fmt = negotiate(environ.get("HTTP_ACCEPT"))
            compress = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING"))
            names = parse_qs(environ.get("QUERY_STRING", "")).get("name[]")
            body = self._snapshots.body(fmt, compress, names)
            headers = [("Content-Type", fmt.content_type)]
            if compress:
                headers.append(("Content-Encoding", "gzip"))
        start_response(status, headers)
        return [body]

    def metrics(self, openmetrics: bool = False) -> bytes:
        """What a scrape gets, uncompressed (for ``otel-podnet top`` and the tests)."""
        fmt = Format(True, "underscores", OPENMETRICS_1_0_0) if openmetrics else negotiate(None)
        return self._snapshots.body(fmt, False)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
