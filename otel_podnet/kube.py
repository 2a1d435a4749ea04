"""The Kubernetes API pod source: the pods of this node, listed, then watched; and the peer
directory: the cluster's pods and Services, for peer metrics (KubePeerDirectory, last part).

The only module that imports ``kubernetes`` (the official client), and only to load a
kubeconfig; otel_podnet.kube_source decides whether this module is needed at all.

- One daemon thread lists the node's pods (``fieldSelector=spec.nodeName=<node>``), then
  watches them from the list's resourceVersion with bookmarks, resuming every new watch
  from the last resourceVersion seen. A 410 Gone (an HTTP status or a watch ERROR event)
  makes it list again and replace the whole view at once.
- While the API is unreachable or refuses us, the last view stays (counting goes on in the
  kernel) and the thread retries with exponential backoff and jitter, capped at 10 s.
- The view is a dict keyed by pod UID that is replaced on every change and never mutated
  afterwards: readers get a read-only proxy of it and need no lock. ``changed`` is set on
  every change, so the agent can resync the kernel's pod-IP map at once.
- Workload names come from otel_podnet.owners.OwnerResolver (ReplicaSet → Deployment and
  Job → CronJob need one GET of the owner, cached; a 403 or 404 falls back to the pod's
  labels with one warning); this module only fetches the owner objects for it.
- Requests go through otel_podnet.kubeapi (urllib3, JSON paths): the pods arrive as the
  plain dicts otel_podnet.inventory.pod_from_object reads (as in a pods file). The
  official client's package imports every generated model (18 MiB resident at import, and
  the agent's RSS was 103 MiB against 56 without it: bench/README.md); it is imported only
  to load a kubeconfig (:func:`load_configuration`); in-cluster needs none of it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import urllib3

from . import __version__, kube_source
from .inventory import PodInfo, SkipWarnings, pod_from_object, pod_name
from .kube_source import ApiTarget
from .kubeapi import SERVICE_ACCOUNT_CA, ApiConfig, ApiError, KubeApi, in_cluster_config
from .log import RateLimited
from .owners import OwnerLookupError, OwnerResolver
from .peer_index import PeerTables
from .peerinfo import PeerWorkload, ServiceRef
from .settings import ConfigError, NotReady

_logger = logging.getLogger(__name__)

RBAC_HINT = "deploy/otel-podnet.yaml"
# Errors of the network or the HTTP layer below the API (the API's own are ApiError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError, ValueError)


class _Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class _WatchError(Exception):
    """A watch ERROR event other than 410."""


# -- pure helpers ---------------------------------------------------------------------------


def backoff_delay(
    failures: int, cap: float = 30.0, base: float = 0.5, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after ``failures`` consecutive failures: exponential from ``base``,
    capped at ``cap``, with equal jitter (between half the step and the full step)."""
    if failures <= 0:
        return 0.0
    step = min(cap, base * 2.0 ** min(failures - 1, 32))
    return step / 2 + rand() * step / 2


def status_message(exc: Any) -> str:
    """The ``message`` of the Status object an API error carries, else its reason."""
    body = getattr(exc, "body", None)
    doc: Any = None
    if body:
        try:
            doc = json.loads(body)
        except (TypeError, ValueError):
            doc = None
    msg = doc.get("message") if isinstance(doc, dict) else None
    return str(msg or getattr(exc, "reason", None) or "").strip()


def first_list_error(exc: Any, server: str, credentials: str) -> ConfigError | None:
    """The configuration error a failed first list means, or None when retrying may help."""
    status = getattr(exc, "status", None)
    if status == 401:
        return ConfigError(
            f"Kubernetes API at {server}: 401 Unauthorized: the credentials of {credentials} were rejected"
        )
    if status == 403:
        m = re.search(r'User "([^"]+)"', status_message(exc))
        who = m.group(1) if m else f"the credentials of {credentials}"
        return ConfigError(
            f"Kubernetes API at {server}: 403 Forbidden: {who} cannot list pods at the cluster scope; "
            f"grant get/list/watch on pods ({RBAC_HINT})"
        )
    return None


def describe(exc: BaseException) -> str:
    """A short, one-line account of a failed request."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(reason, BaseException):
        exc = reason
    if isinstance(exc, ApiError):
        msg = status_message(exc)
        return f"HTTP {exc.status}" + (f": {msg}" if msg else "")
    text = re.sub(r"<[^<>]*>: ", "", str(exc))
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:300] or type(exc).__name__


def _tls_verify_failed(exc: BaseException) -> bool:
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "CERTIFICATE_VERIFY_FAILED" in str(getattr(exc, "reason", ""))


def _events(resp: Any) -> Iterator[Mapping[str, Any]]:
    """The events of a watch response, one JSON object per line, as they arrive."""
    rest = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        if not chunk:
            continue
        lines = (rest + (chunk if isinstance(chunk, bytes) else str(chunk).encode())).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.strip():
                event = json.loads(line)
                if isinstance(event, Mapping):
                    yield event


def _abort(resp: Any) -> None:
    """Unblock a thread reading ``resp`` (a watch) from another thread."""
    try:
        shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3
        if callable(shutdown):
            shutdown()
            return
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


# -- the source -----------------------------------------------------------------------------


class KubePodSource:
    """The pods of ``node_name`` from the Kubernetes API (a PodSource).

    :meth:`start` lists them (retrying for up to ``first_list_timeout`` seconds while the
    API is unreachable) and starts the watching thread. :meth:`refresh` takes the newest
    view (True when it changed since the last refresh) and clears ``changed``;
    :meth:`pods` returns that view, an immutable mapping keyed by pod UID."""

    def __init__(
        self,
        api: KubeApi,
        node_name: str,
        *,
        server: str,
        credentials: str,
        first_list_timeout: float = 30.0,
        backoff_cap: float = 10.0,
        watch_seconds: tuple[int, int] = (300, 600),
        page_size: int = 500,
    ) -> None:
        self.node_name = node_name
        self.server = server
        self.credentials = credentials
        self.first_list_timeout = first_list_timeout
        self.backoff_cap = backoff_cap
        self.changed = threading.Event()
        self._watch_seconds = watch_seconds
        self._page_size = page_size
        self._api = api
        self._selector = f"spec.nodeName={node_name}"
        self._lock = threading.Lock()
        # written by one thread at a time (start(), then the watcher); published under _lock
        self._pods: dict[str, PodInfo] = {}
        self._published: Mapping[str, PodInfo] = MappingProxyType(self._pods)
        self._version = 0
        self._view: Mapping[str, PodInfo] = self._published
        self._view_version = 0
        self._rv = ""
        self._resolver = OwnerResolver(self._fetch_owner, _logger, RBAC_HINT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self._failures = 0
        self._down_since: float | None = None
        self._trouble = RateLimited(_logger, 60.0)  # unreachable, failing
        self._refused = RateLimited(_logger, 60.0)  # 401/403: a different trouble, reported on its own
        self._skips = SkipWarnings(_logger)  # pods with fields of the wrong type
        self._peers: KubePeerDirectory | None = None

    # -- PodSource --------------------------------------------------------------------------

    def refresh(self) -> bool:
        self.changed.clear()  # before reading: a change from now on sets it again
        with self._lock:
            view, version = self._published, self._version
        changed = version != self._view_version
        self._view, self._view_version = view, version
        return changed

    def pods(self) -> Mapping[str, PodInfo]:
        return self._view

    def peer_directory(self) -> KubePeerDirectory | None:
        """The cluster's pods and Services for peer metrics, once :meth:`start_peer_directory`
        started it (the agent's Core asks its pod source for one)."""
        return self._peers

    def start_peer_directory(self, wait: float = 10.0) -> KubePeerDirectory:
        """Start watching the cluster's pods and Services (a client of its own, with this
        source's configuration), waiting up to ``wait`` seconds for the first lists; never
        fails for the API. :meth:`close` stops it."""
        if self._peers is None:
            directory = make_peer_directory(
                api_client(self._api.config),
                server=self.server,
                credentials=self.credentials,
            )
            directory.start()
            self._peers = directory
            if wait > 0 and not directory.wait_synced(wait):
                _logger.warning(
                    "peers: the cluster's pods and Services not listed yet after %g s; peers are named once they are",
                    wait,
                )
        return self._peers

    def close(self) -> None:
        if self._peers is not None:
            self._peers.stop()
        self._stop.set()
        resp = self._resp
        if resp is not None:
            _abort(resp)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        try:
            self._api.close()
        except Exception:  # closing is best effort
            _logger.debug("closing the API client", exc_info=True)

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """List the node's pods, then watch them in a daemon thread. Raises ConfigError when
        the credentials are rejected, lack a permission, or the API stays unreachable."""
        pods, rv = self._first_list()
        self._check_watch_allowed()
        self._rv = rv
        self._publish(pods)
        _logger.info(
            "Kubernetes API at %s: %d pods on node %s (resourceVersion %s); watching them",
            self.server,
            len(pods),
            self.node_name,
            rv or "?",
        )
        if not pods:
            _logger.warning(
                "no pods on node %s yet: if the node has pods, --node-name (NODE_NAME) is not the node's name in "
                "Kubernetes",
                self.node_name,
            )
        self._thread = threading.Thread(target=self._run, name="kube-pods", daemon=True)
        self._thread.start()

    def _first_list(self) -> tuple[dict[str, PodInfo], str]:
        deadline = time.monotonic() + self.first_list_timeout
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._list_all(timeout=(max(0.5, min(10.0, remaining)), max(5.0, remaining)))
            except ApiError as exc:
                fatal = first_list_error(exc, self.server, self.credentials)
                if fatal is not None:
                    raise fatal from None
                last = describe(exc)
            except TRANSPORT_ERRORS as exc:
                if _tls_verify_failed(exc):
                    raise ConfigError(
                        f"Kubernetes API at {self.server}: TLS certificate verification failed; "
                        f"expected the server's certificate authority in {self.credentials}"
                    ) from None
                last = describe(exc)
            failures += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotReady(
                    f"Kubernetes API at {self.server} unreachable: {last} (retried for {self.first_list_timeout:g} s)"
                )
            if failures == 1:
                _logger.warning(
                    "Kubernetes API at %s not reachable yet (%s); retrying for up to %g s",
                    self.server,
                    last,
                    self.first_list_timeout,
                )
            time.sleep(min(remaining, backoff_delay(failures, cap=5.0)))

    def _check_watch_allowed(self) -> None:
        """Listing worked; make sure watching will too (a SelfSubjectAccessReview, which
        every authenticated user may create). Only a clear "no" stops the start."""
        try:
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": "watch", "resource": "pods"}},
            }
            doc = self._api.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review, timeout=(5, 10))
        except Exception as exc:  # the check is a courtesy: the watch itself says the same later
            _logger.debug("SelfSubjectAccessReview for watching pods failed: %s", describe(exc))
            return
        status = doc.get("status")
        if isinstance(status, Mapping) and status.get("allowed") is False:
            raise ConfigError(
                f"Kubernetes API at {self.server}: 403 Forbidden: the credentials of {self.credentials} may list "
                f"but not watch pods at the cluster scope; grant get/list/watch on pods ({RBAC_HINT})"
            )

    # -- the view ---------------------------------------------------------------------------

    def _publish(self, pods: dict[str, PodInfo]) -> None:
        """Make ``pods`` (never mutated afterwards) the current view."""
        with self._lock:
            self._pods = pods
            self._published = MappingProxyType(pods)
            self._version += 1
        self.changed.set()

    def replace_all(self, pods: dict[str, PodInfo], why: str) -> bool:
        """Replace the whole view at once (after a relist); True when anything changed."""
        old = self._pods
        added = pods.keys() - old.keys()
        removed = old.keys() - pods.keys()
        updated = [uid for uid in pods.keys() & old.keys() if pods[uid] != old[uid]]
        changed = bool(added or removed or updated)
        if changed:
            self._publish(pods)
        _logger.info(
            "listed the pods of node %s again (%s): %d pods, %d added, %d removed, %d updated",
            self.node_name,
            why,
            len(pods),
            len(added),
            len(removed),
            len(updated),
        )
        self._prune_owners()
        return changed

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """One watch event: ADDED/MODIFIED/DELETED change the view, BOOKMARK only moves the
        resourceVersion; ERROR raises (_Gone for 410)."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return
        if kind == "ERROR":
            code = obj.get("code")
            msg = str(obj.get("message") or obj.get("reason") or "")
            if code == 410:
                raise _Gone(msg or "410 Gone")
            raise _WatchError(f"watch error {code}: {msg}")
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        if kind in ("ADDED", "MODIFIED"):
            self._upsert(obj)
        elif kind == "DELETED":
            uid = meta.get("uid")
            if uid and str(uid) in self._pods:
                pods = dict(self._pods)
                del pods[str(uid)]
                self._publish(pods)
                self._prune_owners()
        rv = meta.get("resourceVersion")
        if rv:
            self._rv = str(rv)

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        info = self._convert(obj)
        if info is None:
            return
        if info.node_name and info.node_name != self.node_name:  # cannot happen with the field selector
            if info.uid in self._pods:
                pods = dict(self._pods)
                del pods[info.uid]
                self._publish(pods)
            return
        if self._pods.get(info.uid) == info:
            return  # a status change that does not touch what we keep
        pods = dict(self._pods)
        pods[info.uid] = info
        self._publish(pods)

    def _convert(self, obj: Mapping[str, Any]) -> PodInfo | None:
        got = pod_from_object(obj)
        if isinstance(got, str):
            self._skips.warn("the API", pod_name(obj), got)
            return None
        if got.owner is not None:
            workload = self.workload(got.namespace, got.owner, got.labels)
            if workload != got.workload:
                got = replace(got, workload=workload)
        return got

    # -- owners -----------------------------------------------------------------------------

    def workload(self, namespace: str, owner: tuple[str, str], labels: Mapping[str, str]) -> dict[str, str]:
        """Workload attributes of a pod in ``namespace`` controlled by ``owner``; one GET per
        new ReplicaSet or Job, cached (otel_podnet.owners.OwnerResolver)."""
        return self._resolver.workload(namespace, owner, labels)

    def get_owner(self, kind: str, namespace: str, name: str) -> Mapping[str, Any]:
        """The owner object (a ReplicaSet or a Job) as the API returns it."""
        ns, obj = quote(namespace, safe=""), quote(name, safe="")
        if kind == "ReplicaSet":
            path = f"/apis/apps/v1/namespaces/{ns}/replicasets/{obj}"
        else:
            path = f"/apis/batch/v1/namespaces/{ns}/jobs/{obj}"
        return self._api.get(path, timeout=(5, 10))

    def _fetch_owner(self, kind: str, namespace: str, name: str) -> Mapping[str, Any]:
        """get_owner, its failures as the resolver knows them."""
        try:
            return self.get_owner(kind, namespace, name)
        except ApiError as exc:
            status = int(exc.status) if exc.status else None
            raise OwnerLookupError(status, describe(exc), status_message(exc)) from exc
        except TRANSPORT_ERRORS as exc:
            raise OwnerLookupError(None, describe(exc)) from exc

    def _prune_owners(self) -> None:
        self._resolver.prune({(p.namespace, *p.owner) for p in self._pods.values() if p.owner is not None})

    # -- list and watch ---------------------------------------------------------------------

    def _list_all(self, timeout: tuple[float, float] = (10.0, 60.0)) -> tuple[dict[str, PodInfo], str]:
        """Every pod of the node now (a consistent read, page by page) and the list's
        resourceVersion."""
        pods: dict[str, PodInfo] = {}
        token = ""
        while True:
            query: dict[str, str | int | bool] = {"fieldSelector": self._selector, "limit": self._page_size}
            if token:
                query["continue"] = token
            doc = self._api.get("/api/v1/pods", query, timeout=timeout)
            items = doc.get("items")
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, Mapping):
                    continue
                info = self._convert(item)
                if info is not None and (not info.node_name or info.node_name == self.node_name):
                    pods[info.uid] = info
            meta = doc.get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            token = str(meta.get("continue") or "")
            if not token:
                return pods, str(meta.get("resourceVersion") or "")

    def _watch_once(self) -> None:
        """One watch request from the last resourceVersion, until the server ends it."""
        lo, hi = self._watch_seconds
        seconds = random.randint(lo, hi)
        resp = self._api.watch(
            "/api/v1/pods",
            {
                "fieldSelector": self._selector,
                "allowWatchBookmarks": True,
                "resourceVersion": self._rv,
                "timeoutSeconds": seconds,
            },
            timeout=(10, seconds + 60),
        )
        self._resp = resp
        try:
            self._connected()
            for event in _events(resp):
                if self._stop.is_set():
                    return
                self.apply_event(event)
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # releasing is best effort
                _logger.debug("releasing the watch connection", exc_info=True)

    def _connected(self) -> None:
        if self._down_since is not None:
            _logger.info(
                "Kubernetes API at %s reachable again after %.0f s", self.server, time.monotonic() - self._down_since
            )
            self._down_since = None
        self._failures = 0

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
        status = getattr(exc, "status", None) if isinstance(exc, ApiError) else None
        if status in (401, 403):
            self._refused.log(
                logging.ERROR,
                "Kubernetes API at %s refused to watch the pods of node %s with the credentials of %s (%s); "
                "keeping the last view of %d pods and retrying (grant get/list/watch on pods, %s)",
                self.server,
                self.node_name,
                self.credentials,
                describe(exc),
                len(self._pods),
                RBAC_HINT,
            )
        else:
            self._trouble.log(
                logging.WARNING,
                "Kubernetes API at %s unreachable (%s); keeping the last view of %d pods (counting goes on in "
                "the kernel) and retrying with backoff",
                self.server,
                describe(exc),
                len(self._pods),
            )

    def _run(self) -> None:
        need_list = False
        why = ""
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if need_list:
                    pods, rv = self._list_all()
                    self._connected()
                    self._rv = rv
                    self.replace_all(pods, why)
                    need_list = False
                    began = time.monotonic()
                self._watch_once()
                if time.monotonic() - began > 1.0:
                    continue  # the server ended the watch (its timeout): watch again at once
                self._failures += 1  # a watch that ends at once: do not spin
            except _Gone as exc:
                need_list, why = True, f"410 Gone: {exc}"
                if time.monotonic() - began > 1.0:
                    continue
                self._failures += 1
            except _WatchError as exc:
                if self._stop.is_set():
                    break
                need_list, why = True, str(exc)
                self._failed(exc)
            except ApiError as exc:
                if self._stop.is_set():
                    break
                if exc.status == 410:
                    need_list, why = True, "410 Gone"
                self._failed(exc)
            except TRANSPORT_ERRORS as exc:
                if self._stop.is_set():
                    break
                self._failed(exc)
            except Exception as exc:  # never let the watcher die: the view would freeze silently
                if self._stop.is_set():
                    break
                _logger.exception("unexpected error watching the pods of node %s", self.node_name)
                need_list, why = True, f"after {type(exc).__name__}"
                self._failures += 1
            self._stop.wait(backoff_delay(self._failures, cap=self.backoff_cap))


# -- the cluster's pods and Services, for peers ----------------------------------------------

# Pods that can be a peer: with an IP, not finished (a finished pod's IP may be another's).
# Host-network pods are kept apart, as their nodes' addresses (otel_podnet.peer_index).
PEER_POD_SELECTOR = "status.podIP!=,status.phase!=Succeeded,status.phase!=Failed"
# kind -> (what to grant, and what is missing without it)
_PEER_RBAC = {
    "pods": ("list/watch on pods", "no pod peer is named"),
    "services": ("list/watch on services", "peers reached through a ClusterIP are not named as Services"),
    "endpointslices": (
        "list/watch on endpointslices.discovery.k8s.io",
        "Services are named without their backends",
    ),
}


class _PeerOutage:
    """The API's unreachability as the directory's three feeds see it, reported once for
    all of them: one warning per minute at most while it lasts, one line when it ends."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._trouble = RateLimited(_logger, 60.0)

    def failed(self, kind: str, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._trouble.log(
                logging.WARNING,
                "peers: Kubernetes API at %s unreachable (%s, watching the cluster's %s); peers are named from the "
                "last view, retrying with backoff",
                self.server,
                describe(exc),
                kind,
            )

    def connected(self) -> None:
        with self._lock:
            if self._down_since is not None:
                _logger.info(
                    "peers: Kubernetes API at %s reachable again after %.0f s",
                    self.server,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None


class _PeerFeed:
    """One resource of the whole cluster (pods, services or endpointslices), listed page by
    page into a fresh index that then replaces the live one at once, and watched from the
    list's resourceVersion with bookmarks; a 410 Gone lists again. While the API is away or
    refuses, the last index stays and the feed retries with backoff."""

    def __init__(
        self,
        kind: str,
        api: KubeApi | None,
        path: str,
        tables: PeerTables,
        stop: threading.Event,
        *,
        server: str,
        credentials: str,
        selector: str = "",
        backoff_cap: float = 10.0,
        watch_seconds: tuple[int, int] = (300, 600),
        page_size: int = 500,
        outage: _PeerOutage | None = None,
    ) -> None:
        self.kind = kind
        self.synced = threading.Event()  # set by the first complete list
        self.rv = ""
        self._api = api
        self._path = path
        self._tables = tables
        self._stop = stop
        self._server = server
        self._credentials = credentials
        self._selector = selector
        self._backoff_cap = backoff_cap
        self._watch_seconds = watch_seconds
        self._page_size = page_size
        self._resp: Any = None
        self._failures = 0
        self._outage = outage or _PeerOutage(server)
        self._refused = RateLimited(_logger, 60.0)
        self.thread = threading.Thread(target=self.run, name=f"kube-peer-{kind}", daemon=True)

    def abort(self) -> None:
        resp = self._resp
        if resp is not None:
            _abort(resp)

    def _query(self, **query: str | int | bool) -> dict[str, str | int | bool]:
        if self._selector:
            query["fieldSelector"] = self._selector
        return query

    def _get_api(self) -> KubeApi:
        if self._api is None:
            raise ValueError(f"no API client to list {self.kind}")
        return self._api

    def relist(self, why: str) -> None:
        """Every object now (a consistent read, page by page) into a fresh index, installed
        at once; the watch resumes from the list's resourceVersion."""
        index = self._tables.fresh(self.kind)
        token = ""
        while True:
            query = self._query(limit=self._page_size)
            if token:
                query["continue"] = token
            doc = self._get_api().get(self._path, query, timeout=(10, 60))
            items = doc.get("items")
            for item in items if isinstance(items, list) else []:
                if isinstance(item, Mapping):
                    index.apply("ADDED", item)
            meta = doc.get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            token = str(meta.get("continue") or "")
            if not token:
                break
        self._tables.install(self.kind, index)
        self.rv = str(meta.get("resourceVersion") or "")
        first = not self.synced.is_set()
        self.synced.set()
        _logger.info(
            "peers: %s %d %s of the cluster (%s, resourceVersion %s)",
            "listed" if first else "listed again",
            len(index),
            self.kind,
            "start" if first else why,
            self.rv or "?",
        )

    def _watch_once(self) -> None:
        lo, hi = self._watch_seconds
        seconds = random.randint(lo, hi)
        resp = self._get_api().watch(
            self._path,
            self._query(allowWatchBookmarks=True, resourceVersion=self.rv, timeoutSeconds=seconds),
            timeout=(10, seconds + 60),
        )
        self._resp = resp
        try:
            if self._stop.is_set():
                return  # stop() came before self._resp was set: it could not abort this one
            self._connected()
            for event in _events(resp):
                if self._stop.is_set():
                    return
                self.apply_event(event)
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # releasing is best effort
                _logger.debug("releasing the watch connection", exc_info=True)

    def apply_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return
        if kind == "ERROR":
            code = obj.get("code")
            msg = str(obj.get("message") or obj.get("reason") or "")
            if code == 410:
                raise _Gone(msg or "410 Gone")
            raise _WatchError(f"watch error {code}: {msg}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._tables.apply(self.kind, kind, obj)
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        if rv:
            self.rv = str(rv)

    def _connected(self) -> None:
        self._outage.connected()
        self._failures = 0

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        status = getattr(exc, "status", None) if isinstance(exc, ApiError) else None
        grant, missing = _PEER_RBAC[self.kind]
        if status in (401, 403):
            self._refused.log(
                logging.ERROR,
                "Kubernetes API at %s refused to list/watch %s of the cluster with the credentials of %s (%s): "
                "%s; retrying (grant %s, %s)",
                self._server,
                self.kind,
                self._credentials,
                describe(exc),
                missing if not self.synced.is_set() else "peers are resolved from the last view",
                grant,
                RBAC_HINT,
            )
        else:
            self._outage.failed(self.kind, exc)

    def run(self) -> None:
        need_list, why = True, "start"
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if need_list:
                    self.relist(why)
                    self._connected()
                    need_list = False
                    began = time.monotonic()
                self._watch_once()
                if time.monotonic() - began > 1.0:
                    continue  # the server ended the watch (its timeout): watch again at once
                self._failures += 1  # a watch that ends at once: do not spin
            except _Gone as exc:
                need_list, why = True, f"410 Gone: {exc}"
                if time.monotonic() - began > 1.0:
                    continue
                self._failures += 1
            except _WatchError as exc:
                if self._stop.is_set():
                    break
                need_list, why = True, str(exc)
                self._failed(exc)
            except ApiError as exc:
                if self._stop.is_set():
                    break
                if exc.status == 410:
                    need_list, why = True, "410 Gone"
                self._failed(exc)
            except TRANSPORT_ERRORS as exc:
                if self._stop.is_set():
                    break
                self._failed(exc)
            except Exception as exc:  # never let the feed die: the view would freeze silently
                if self._stop.is_set():
                    break
                _logger.exception("unexpected error watching the cluster's %s", self.kind)
                need_list, why = True, f"after {type(exc).__name__}"
                self._failures += 1
            self._stop.wait(backoff_delay(self._failures, cap=self._backoff_cap))


class KubePeerDirectory:
    """The cluster's pods and Services from the Kubernetes API: a PeerDirectory
    (otel_podnet.peerinfo) over otel_podnet.peer_index.PeerTables.

    Three daemon threads list and watch pods (with an IP, not finished; all nodes),
    Services and discovery.k8s.io/v1 EndpointSlices; each keeps only what a lookup needs.
    Host-network pods are no pod peers: their IPs are the nodes' (:meth:`node_ips`).
    :meth:`start` returns at once (the agent starts counting; peers are named once the
    first lists arrive, :meth:`wait_synced`); a refused or unreachable API never stops the
    agent: lookups answer from the last view."""

    def __init__(
        self,
        api: KubeApi,
        *,
        server: str,
        credentials: str,
        backoff_cap: float = 10.0,
        watch_seconds: tuple[int, int] = (300, 600),
        page_size: int = 100,  # peak memory of a sync: 9 MiB at 100 a page, 31 at 500 (bench/README.md)
    ) -> None:
        self.server = server
        self.tables = PeerTables()
        self._api = api
        self._stop = threading.Event()
        common: dict[str, Any] = {
            "outage": _PeerOutage(server),
            "server": server,
            "credentials": credentials,
            "backoff_cap": backoff_cap,
            "watch_seconds": watch_seconds,
            "page_size": page_size,
        }
        self.feeds = (
            _PeerFeed("pods", api, "/api/v1/pods", self.tables, self._stop, selector=PEER_POD_SELECTOR, **common),
            _PeerFeed("services", api, "/api/v1/services", self.tables, self._stop, **common),
            _PeerFeed(
                "endpointslices", api, "/apis/discovery.k8s.io/v1/endpointslices", self.tables, self._stop, **common
            ),
        )
        self._started = False

    # -- PeerDirectory ----------------------------------------------------------------------

    def pod_by_ip(self, ip: str) -> PeerWorkload | None:
        return self.tables.pod_by_ip(ip)

    def service_by_ip(self, ip: str) -> ServiceRef | None:
        return self.tables.service_by_ip(ip)

    def node_ips(self) -> frozenset[str]:
        """The cluster's node addresses as its host-network pods show them."""
        return self.tables.node_ips()

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for feed in self.feeds:
            feed.thread.start()

    def wait_synced(self, timeout: float) -> bool:
        """True once every feed has listed once, False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for feed in self.feeds:
            if not feed.synced.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def stop(self) -> None:
        self._stop.set()
        for feed in self.feeds:
            feed.abort()
        for feed in self.feeds:
            if feed.thread.is_alive() and feed.thread is not threading.current_thread():
                feed.thread.join(timeout=5.0)
        try:
            self._api.close()
        except Exception:  # closing is best effort
            _logger.debug("closing the API client", exc_info=True)

    close = stop


def make_peer_directory(api: KubeApi, *, server: str, credentials: str) -> KubePeerDirectory:
    """A directory of the cluster's pods and Services over ``api`` (not started: call
    :meth:`KubePeerDirectory.start`, and :meth:`KubePeerDirectory.stop` at the end; the
    directory closes ``api`` then, so give it one of its own)."""
    return KubePeerDirectory(api, server=server, credentials=credentials)


def open_peer_directory(target: ApiTarget, wait: float = 10.0) -> KubePeerDirectory:
    """The started directory of the cluster ``target`` points at, with its own API client;
    waits up to ``wait`` seconds for the first lists (never fails for the API: peers are
    named once it answers)."""
    cfg = load_configuration(target)
    directory = make_peer_directory(api_client(cfg), server=cfg.host, credentials=target.description)
    directory.start()
    if wait > 0 and not directory.wait_synced(wait):
        _logger.warning(
            "peers: the cluster's pods and Services not listed yet after %g s; peers are named once they are", wait
        )
    return directory


# -- construction -----------------------------------------------------------------------------


def api_client(cfg: ApiConfig) -> KubeApi:
    """A transport of its own over ``cfg`` (each source and directory closes its own)."""
    return KubeApi(cfg, user_agent=f"otel-podnet/{__version__}")


def load_configuration(
    target: ApiTarget,
    *,
    env: Mapping[str, str] | None = None,
    token_file: Path | None = None,
    ca_file: Path = SERVICE_ACCOUNT_CA,
) -> ApiConfig:
    """The transport's configuration for ``target``; ConfigError when it cannot be loaded.

    In-cluster: from ``env`` (the process's by default), ``token_file`` (the service
    account's, as otel_podnet.kube_source found it) and ``ca_file``, without importing the
    official client. A kubeconfig: loaded by the official client's loader (client
    certificates, tokens, exec and auth-provider plugins with their refresh)."""
    loaders = None if target.in_cluster else _official_loaders(target)
    try:
        if loaders is None:
            return in_cluster_config(env, token_file or kube_source.SERVICE_ACCOUNT_TOKEN, ca_file)
        return _kubeconfig(target, *loaders)
    except Exception as exc:  # the loaders raise anything from ConfigException to KeyError
        detail = describe(exc) if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{target.description}: {detail}; expected a usable Kubernetes config (a server and credentials)"
        ) from None


def _official_loaders(target: ApiTarget) -> tuple[Any, Any]:
    """The official client's Configuration class and config loaders, imported here only
    (for a kubeconfig); ConfigError when the package is missing."""
    try:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
    except ImportError as exc:
        raise ConfigError(
            f"{target.description}: the Kubernetes API needs the Python package 'kubernetes' ({exc}); "
            "expected it installed with otel-podnet"
        ) from exc
    return k8s_client.Configuration, k8s_config  # the loaders are untyped in some client versions


def _kubeconfig(target: ApiTarget, configuration: Any, loaders: Any) -> ApiConfig:
    """A kubeconfig through the official client's loader."""
    cfg: Any = configuration()
    loaders.load_kube_config(config_file=str(target.kubeconfig), client_configuration=cfg, persist_config=False)

    def authorization() -> str | None:
        # runs the loader's refresh hook (exec plugins, OIDC) before answering, as the client does
        value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(value) if value else None

    return ApiConfig(
        host=str(cfg.host),
        authorization=authorization,
        ca_file=cfg.ssl_ca_cert,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        verify=bool(cfg.verify_ssl),
        assert_hostname=getattr(cfg, "assert_hostname", None),
        tls_server_name=getattr(cfg, "tls_server_name", None),
        proxy=cfg.proxy,
        proxy_headers=getattr(cfg, "proxy_headers", None),
    )


def open_source(
    target: ApiTarget,
    node_name: str,
    first_list_timeout: float = 30.0,
    *,
    env: Mapping[str, str] | None = None,
    token_file: Path | None = None,
    ca_file: Path = SERVICE_ACCOUNT_CA,
) -> KubePodSource:
    """The started source of ``node_name``'s pods from the API ``target`` points at (the
    in-cluster files as :func:`load_configuration` takes them)."""
    cfg = load_configuration(target, env=env, token_file=token_file, ca_file=ca_file)
    source = KubePodSource(
        api_client(cfg),
        node_name,
        server=cfg.host,
        credentials=target.description,
        first_list_timeout=first_list_timeout,
    )
    try:
        source.start()
    except BaseException:
        source.close()
        raise
    return source
