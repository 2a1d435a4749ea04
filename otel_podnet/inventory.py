"""What the agent knows of the node's pods, and the ``--pods-file`` source of it.

A pod source yields :class:`PodInfo` records keyed by UID. The pods file is what
``kubectl get pods -o yaml`` (or ``-o json``) writes (a ``List`` of Pods), or a ``PodList``,
a single ``Pod``, or several of these as YAML documents; it is re-read when it changes.
The Kubernetes API source lives in otel_podnet.kube.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Any, Protocol

import yaml

from .owners import workload_from_owner

_logger = getLogger(__name__)

LIVE_PHASES = frozenset({"Pending", "Running"})


class InventoryError(Exception):
    """The pods file cannot be used at all (exit 2)."""


@dataclass(frozen=True)
class PodInfo:
    uid: str
    name: str
    namespace: str
    node_name: str = ""
    phase: str = "Running"
    ips: tuple[str, ...] = ()
    host_network: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    # only the resource.opentelemetry.io/* annotations (the only ones used): a pod's other
    # annotations (last-applied configurations, ...) can be large
    annotations: Mapping[str, str] = field(default_factory=dict)
    # (kind, name) of the controlling owner, e.g. ("ReplicaSet", "web-5d8f9c7b6")
    owner: tuple[str, str] | None = None
    # workload attributes resolved by the source, e.g. {"k8s.deployment.name": "web"}
    workload: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False  # metadata.deletionTimestamp is set

    @property
    def ip_claim_rank(self) -> int:
        """Which pod keeps an IP two pods claim: a live Running pod, then a Pending one, then a
        terminating one (whose IP is about to be reused)."""
        return (2 if self.phase == "Running" else 1) + (0 if self.terminating else 2)

    @property
    def ips_for_fallback(self) -> tuple[str, ...]:
        """IPs that go into the kernel's pod-IP map: live pods' own IPs, never the node's."""
        if self.host_network or self.phase not in LIVE_PHASES:
            return ()
        return self.ips


class PodSource(Protocol):
    """Where the agent learns the node's pods. ``changed`` is set by a source that learns of
    changes between collections (the API watch), so the agent can bring the kernel's maps in
    line at once; a source that never sets it is read at each collection only."""

    changed: threading.Event

    def refresh(self) -> bool:
        """Bring the view up to date; True when it changed."""

    def pods(self) -> Mapping[str, PodInfo]: ...

    def close(self) -> None: ...


RESOURCE_ANNOTATIONS = "resource.opentelemetry.io/"  # the only annotations PodInfo keeps


class _Unusable(Exception):
    """A field of a Pod object the agent cannot use; the message names the field."""


def _string(m: Mapping[str, Any], key: str, where: str) -> str:
    v = m.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _Unusable(f"{where}.{key}: expected a string, got {type(v).__name__}")
    return v


def _mapping(m: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = m.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _Unusable(f"{where}.{key}: expected a mapping, got {type(v).__name__}")
    return v


def _string_map(m: Mapping[str, Any], key: str, where: str, keep: str = "") -> dict[str, str]:
    """A map of strings (labels, annotations), only the keys starting with ``keep``."""
    out: dict[str, str] = {}
    for k, v in _mapping(m, key, where).items():
        if not isinstance(k, str) or not k.startswith(keep):
            continue
        if not isinstance(v, str):
            raise _Unusable(f"{where}.{key}[{k!r}]: expected a string, got {type(v).__name__}")
        out[k] = v
    return out


def _ip(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Unusable(f"{where}: expected an IP address, got {type(value).__name__}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _Unusable(f"{where}: {value!r} is not an IP address") from None


def pod_from_object(obj: Mapping[str, Any]) -> PodInfo | str:
    """A PodInfo from a Pod object, or the reason it cannot be used (naming the field)."""
    try:
        return _pod(obj)
    except _Unusable as exc:
        return str(exc)


def _pod(obj: Mapping[str, Any]) -> PodInfo:
    meta = _mapping(obj, "metadata", "pod")
    spec = _mapping(obj, "spec", "pod")
    status = _mapping(obj, "status", "pod")
    uid, name, ns = (_string(meta, k, "metadata") for k in ("uid", "name", "namespace"))
    missing = [f"metadata.{k}" for k, v in (("uid", uid), ("name", name), ("namespace", ns)) if not v]
    if missing:
        raise _Unusable("missing " + ", ".join(missing))
    ips: list[str] = []
    pod_ips = status.get("podIPs") or []
    if not isinstance(pod_ips, list):
        raise _Unusable(f"status.podIPs: expected a list, got {type(pod_ips).__name__}")
    for i, item in enumerate(pod_ips):
        if not isinstance(item, Mapping):
            raise _Unusable(f"status.podIPs[{i}]: expected a mapping, got {type(item).__name__}")
        if item.get("ip"):
            ips.append(_ip(item["ip"], f"status.podIPs[{i}].ip"))
    if status.get("podIP"):
        ip = _ip(status["podIP"], "status.podIP")
        if not ips:
            ips.append(ip)
    host_network = spec.get("hostNetwork", False)
    if host_network is None:
        host_network = False
    if not isinstance(host_network, bool):
        raise _Unusable(f"spec.hostNetwork: expected true or false, got {host_network!r}")
    refs = meta.get("ownerReferences") or []
    if not isinstance(refs, list):
        raise _Unusable(f"metadata.ownerReferences: expected a list, got {type(refs).__name__}")
    owner = None
    for ref in refs:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            kind, oname = ref.get("kind"), ref.get("name")
            if isinstance(kind, str) and isinstance(oname, str) and kind and oname:
                owner = (kind, oname)
                break
    labels = _string_map(meta, "labels", "metadata")
    return PodInfo(
        uid=uid,
        name=name,
        namespace=ns,
        node_name=_string(spec, "nodeName", "spec"),
        phase=_string(status, "phase", "status") or "Pending",
        ips=tuple(ips),
        host_network=host_network,
        labels=labels,
        annotations=_string_map(meta, "annotations", "metadata", keep=RESOURCE_ANNOTATIONS),
        owner=owner,
        workload=workload_from_owner(owner, labels),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def pod_name(obj: Any) -> str:
    """namespace/name of a Pod object as far as it has them, for messages."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    return f"{meta.get('namespace') or '?'}/{meta.get('name') or '?'}"


class SkipWarnings:
    """One warning per unusable pod and reason, then at most one per ``period`` seconds (a
    pod the API updates every few seconds must not flood the log). Bounded: the memory of
    what was warned is dropped when it holds ``limit`` entries."""

    def __init__(self, logger: logging.Logger, period: float = 600.0, limit: int = 1024) -> None:
        self._logger = logger
        self._period = period
        self._limit = limit
        self._last: dict[tuple[str, str], float] = {}

    def warn(self, where: str, who: str, reason: str) -> None:
        now = time.monotonic()
        key = (who, reason)
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            return
        if len(self._last) >= self._limit:
            self._last.clear()
        self._last[key] = now
        self._logger.warning("%s: pod %s skipped: %s", where, who, reason)


_skips = SkipWarnings(_logger)


def _objects(text: str, source: str) -> tuple[list[Any], list[str]]:
    """The Pod objects of a pods file and the kinds of the items that are not Pods.

    Accepted: what ``kubectl get pods -o yaml|json`` writes (``kind: List``), the API's
    ``PodList`` (its items carry no kind), a single ``Pod``, and several such documents in one
    YAML stream (``---``)."""
    try:
        if text.lstrip().startswith("{"):
            docs: list[Any] = [json.loads(text)]
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, yaml.YAMLError) as exc:
        raise InventoryError(
            f"{source}: not YAML or JSON ({str(exc).splitlines()[0]}); expected `kubectl get pods -o yaml` output"
        ) from exc
    pods: list[Any] = []
    others: list[str] = []
    usable_docs = 0
    first_kind: Any = "none"
    for doc in docs:
        kind = doc.get("kind") if isinstance(doc, Mapping) else type(doc).__name__
        if first_kind == "none":
            first_kind = kind
        if kind in ("List", "PodList") and isinstance(doc, Mapping):
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise InventoryError(f"{source}: items of a {kind} must be a list, got {type(items).__name__}")
            usable_docs += 1
            for item in items:
                item_kind = item.get("kind", "Pod") if isinstance(item, Mapping) else type(item).__name__
                if item_kind == "Pod":
                    pods.append(item)
                else:
                    others.append(str(item_kind))
        elif kind == "Pod":
            usable_docs += 1
            pods.append(doc)
        else:
            others.append(str(kind))
    if not usable_docs:
        raise InventoryError(
            f"{source}: kind {first_kind!r} is not a PodList, List or Pod; "
            "expected `kubectl get pods -o yaml` or `-o json` output"
        )
    return pods, others


def parse_pod_list(text: str, source: str) -> list[PodInfo]:
    """The pods of a pods file (see :func:`_objects`). Items that are not Pods are skipped
    with one warning; pods the agent cannot use with one warning each naming the field."""
    objs, others = _objects(text, source)
    if others:
        counts = {k: others.count(k) for k in sorted(set(others))}
        _logger.warning(
            "%s: %d item(s) that are not Pods skipped (%s)",
            source,
            len(others),
            ", ".join(f"{k} x{n}" for k, n in counts.items()),
        )
    pods: list[PodInfo] = []
    for obj in objs:
        got = pod_from_object(obj)
        if isinstance(got, str):
            _skips.warn(source, pod_name(obj), got)
            continue
        pods.append(got)
    return pods


class PodsFileSource:
    """Pods from a PodList file, re-read whenever the file changes (mtime, size or inode)."""

    def __init__(self, path: Path, node_name: str) -> None:
        self.path = path
        self.node_name = node_name
        self._stamp: tuple[int, int, int] | None = None
        self._pods: dict[str, PodInfo] = {}
        self.changed = threading.Event()  # never set: the file is read at each collection
        # peers (issue 12): every pod of the file (not only this node's) and its Services
        self._text = ""
        self._all: list[PodInfo] = []
        self._directory: Any = None

    def refresh(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._stamp is None:
                raise InventoryError(
                    f"--pods-file {self.path}: {exc.strerror}; expected a readable PodList file"
                ) from exc
            _logger.warning("pods file %s unreadable (%s); keeping the last view", self.path, exc.strerror)
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        try:
            text = self.path.read_text()
            pods = parse_pod_list(text, str(self.path))
        except InventoryError:
            if self._stamp is None:
                raise
            _logger.exception("pods file %s is invalid now; keeping the last view", self.path)
            self._stamp = stamp
            return False
        self._stamp = stamp
        self._text, self._all, self._directory = text, pods, None
        mine = {p.uid: p for p in pods if not p.node_name or not self.node_name or p.node_name == self.node_name}
        changed = mine != self._pods
        self._pods = mine
        _logger.info("pods file %s: %d pods on node %s", self.path, len(mine), self.node_name or "(any)")
        return changed

    def pods(self) -> Mapping[str, PodInfo]:
        return self._pods

    def peer_directory(self) -> Any:
        """Peers (issue 12) are resolved from the pods the file lists, on every node, and
        from the Services it lists (``kubectl get pods,services -o yaml``): a
        otel_podnet.peerinfo.StaticPeerDirectory."""
        if self._directory is None:
            from .peerinfo import directory_from_text

            self._directory = directory_from_text(self._text, self._all)
        return self._directory

    def close(self) -> None:
        pass


class NoPods:
    """Host mode: no inventory, pods are known by the UID in their cgroup name only."""

    def __init__(self) -> None:
        self.changed = threading.Event()  # never set

    def refresh(self) -> bool:
        return False

    def pods(self) -> Mapping[str, PodInfo]:
        return {}

    def close(self) -> None:
        pass
