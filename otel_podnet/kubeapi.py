"""A small REST transport to the Kubernetes API, without the ``kubernetes`` package.

otel_podnet.kube makes every request with JSON paths and decodes the answers itself, so the
official client's generated API classes and models (18 MiB resident at import, more once
its API methods run: bench/README.md) buy nothing. This module has what it needs: GET and
POST of JSON, watch streams, an error carrying the HTTP status, reason and body, and the
in-cluster configuration (the DaemonSet's) built from the service account files. A
kubeconfig is still loaded by the official client's loader
(otel_podnet.kube.load_configuration, on that path only), which fills an
:class:`ApiConfig`.

Design decisions:

- urllib3 (already the client's transport) with the same settings the client used: no
  retries of its own (ours are in kube.py, with backoff), (connect, read) timeouts per
  request, responses read unbuffered so watches stream line by line.
- The Authorization header is asked for on every request (:attr:`ApiConfig.authorization`):
  the in-cluster token file is re-read when it changes (bound service account tokens
  rotate, the kubelet swaps the file), at the latest every minute; a kubeconfig's exec or
  OIDC token refreshes through the client's own hook.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

_logger = getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_ACCOUNT_TOKEN = SERVICE_ACCOUNT_DIR / "token"
SERVICE_ACCOUNT_CA = SERVICE_ACCOUNT_DIR / "ca.crt"

Query = Mapping[str, "str | int | bool"]
Timeout = tuple[float, float]  # (connect, read) seconds


class ApiError(Exception):
    """The API answered a request with an HTTP status outside 2xx."""

    def __init__(self, status: int, reason: str, body: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(f"HTTP {status} {reason}".strip())


class InClusterConfigError(Exception):
    """The in-cluster configuration is incomplete (a missing environment variable or file)."""


@dataclass(frozen=True)
class ApiConfig:
    """What the transport needs to reach one API server."""

    host: str  # https://host:port, possibly with a path prefix
    authorization: Callable[[], str | None]  # the Authorization header now, or None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    assert_hostname: bool | None = None
    tls_server_name: str | None = None
    proxy: str | None = None
    proxy_headers: Mapping[str, str] | None = None


# -- in-cluster ---------------------------------------------------------------------------------


class TokenFile:
    """The bearer token of a service account token file, re-read when the file changes
    (another inode, size or modification time: the kubelet replaces it atomically) and at
    least every ``max_age`` seconds; while it cannot be read, the last token stays."""

    def __init__(self, path: Path, max_age: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._read_at = 0.0
        self._token = ""

    def load(self) -> None:
        """The first read; InClusterConfigError when the file is missing or empty."""
        if not self.path.is_file():
            raise InClusterConfigError("Service token file does not exist.")
        with self._lock:
            self._read()
        if not self._token:
            raise InClusterConfigError("Token file exists but empty.")

    def _read(self) -> None:
        st = self.path.stat()
        token = self.path.read_text().strip()
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._read_at = self._clock()
        if token:
            self._token = token

    def token(self) -> str:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp != self._stamp or self._clock() - self._read_at >= self.max_age:
                    self._read()
            except OSError as exc:  # mid-rotation, or gone: the last token may still be valid
                _logger.debug("re-reading %s: %s", self.path, exc)
            return self._token

    def authorization(self) -> str | None:
        token = self.token()
        return f"Bearer {token}" if token else None


def join_host_port(host: str, port: str) -> str:
    """``host:port``, an IPv6 address in brackets (as Go's net.JoinHostPort)."""
    return f"[{host}]:{port}" if ":" in host or "%" in host else f"{host}:{port}"


def in_cluster_config(
    env: Mapping[str, str] | None = None,
    token_file: Path = SERVICE_ACCOUNT_TOKEN,
    ca_file: Path = SERVICE_ACCOUNT_CA,
) -> ApiConfig:
    """The configuration a pod's service account gives: ``KUBERNETES_SERVICE_HOST`` and
    ``_PORT``, the token file (re-read as it rotates) and the cluster's CA. Raises
    InClusterConfigError (the same words as the official client's loader)."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if host is None or port is None:
        raise InClusterConfigError("Service host/port is not set.")
    if not host or not port:
        raise InClusterConfigError("Service host/port is set but empty.")
    tokens = TokenFile(token_file)
    tokens.load()
    if not ca_file.is_file():
        raise InClusterConfigError("Service certification file does not exist.")
    if not ca_file.read_text():
        raise InClusterConfigError("Cert file exists but empty.")
    return ApiConfig(
        host=f"https://{join_host_port(host, port)}", authorization=tokens.authorization, ca_file=str(ca_file)
    )


# -- the transport ----------------------------------------------------------------------------


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class KubeApi:
    """GET and POST of JSON and watch streams against one API server (thread-safe)."""

    def __init__(self, config: ApiConfig, *, user_agent: str = "otel-podnet", maxsize: int = 8) -> None:
        self.config = config
        self.host = config.host.rstrip("/")
        self.user_agent = user_agent
        tls: dict[str, Any] = {
            "cert_reqs": "CERT_REQUIRED" if config.verify else "CERT_NONE",
            "ca_certs": config.ca_file,
            "cert_file": config.cert_file,
            "key_file": config.key_file,
        }
        if config.assert_hostname is not None:
            tls["assert_hostname"] = config.assert_hostname
        if config.tls_server_name:
            tls["server_hostname"] = config.tls_server_name
        # retries=0: retrying is the caller's, with backoff (and urllib3 would log each attempt)
        self._pool: urllib3.PoolManager
        if config.proxy:
            self._pool = urllib3.ProxyManager(
                config.proxy,
                num_pools=2,
                maxsize=maxsize,
                retries=0,
                proxy_headers=dict(config.proxy_headers or {}),
                **tls,
            )
        else:
            self._pool = urllib3.PoolManager(num_pools=2, maxsize=maxsize, retries=0, **tls)

    def url(self, path: str, query: Query | None = None) -> str:
        params = {k: _query_value(v) for k, v in (query or {}).items()}
        return self.host + path + (f"?{urlencode(params)}" if params else "")

    def request(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: Timeout,
    ) -> urllib3.BaseHTTPResponse:
        """The open response (not read yet: release it, or read it to the end). Raises
        ApiError for a status outside 2xx, urllib3's errors for the network's."""
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        auth = self.config.authorization()
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        resp = self._pool.request(
            method,
            self.url(path, query),
            body=data,
            headers=headers,
            preload_content=False,
            redirect=False,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
        )
        if not 200 <= resp.status <= 299:
            try:
                text = resp.data.decode("utf-8", "replace")
            finally:
                resp.release_conn()
            raise ApiError(resp.status, resp.reason or "", text, dict(resp.headers))
        return resp

    def get(self, path: str, query: Query | None = None, *, timeout: Timeout) -> dict[str, Any]:
        """The JSON object at ``path``."""
        return _json(self.request("GET", path, query, timeout=timeout))

    def post(self, path: str, body: Mapping[str, Any], *, timeout: Timeout) -> dict[str, Any]:
        """POST ``body`` as JSON; the JSON object answered."""
        return _json(self.request("POST", path, None, body, timeout=timeout))

    def watch(self, path: str, query: Query, *, timeout: Timeout) -> urllib3.BaseHTTPResponse:
        """A watch request's open response: its events are read line by line from
        ``stream()``; ``shutdown()`` unblocks a reader in another thread."""
        return self.request("GET", path, {**query, "watch": True}, timeout=timeout)

    def close(self) -> None:
        self._pool.clear()


def _json(resp: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    try:
        data = resp.data
    finally:
        resp.release_conn()
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    return doc
