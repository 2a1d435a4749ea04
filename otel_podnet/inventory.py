"""What the agent knows of the node's pods, and the ``--pods-file`` source of it.

A pod source yields :class:`PodInfo` records keyed by UID. The pods file is a Kubernetes
``PodList`` exactly as ``kubectl get pods -o yaml`` (or ``-o json``) writes it, re-read when
it changes. The Kubernetes API source lives in otel_podnet.kube.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Any, Protocol

import yaml

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
    def refresh(self) -> bool:
        """Bring the view up to date; True when it changed."""

    def pods(self) -> Mapping[str, PodInfo]: ...

    def close(self) -> None: ...


def pod_from_object(obj: Mapping[str, Any]) -> PodInfo | str:
    """A PodInfo from a Pod object, or the reason it cannot be used."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        return "metadata, spec and status must be mappings"
    uid, name, ns = meta.get("uid"), meta.get("name"), meta.get("namespace")
    missing = [k for k, v in (("metadata.uid", uid), ("metadata.name", name), ("metadata.namespace", ns)) if not v]
    if missing:
        return "missing " + ", ".join(missing)
    ips: list[str] = []
    for item in status.get("podIPs") or []:
        if isinstance(item, Mapping) and item.get("ip"):
            ips.append(str(item["ip"]))
    if not ips and status.get("podIP"):
        ips.append(str(status["podIP"]))
    owner = None
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") and ref.get("name"):
            owner = (str(ref["kind"]), str(ref["name"]))
            break
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    return PodInfo(
        uid=str(uid),
        name=str(name),
        namespace=str(ns),
        node_name=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or "Pending"),
        ips=tuple(ips),
        host_network=bool(spec.get("hostNetwork", False)),
        labels=labels,
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        owner=owner,
        workload=workload_from_owner(owner, labels),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def workload_from_owner(owner: tuple[str, str] | None, labels: Mapping[str, str]) -> dict[str, str]:
    """Workload attributes knowable from the pod alone (the API source resolves more)."""
    if owner is None:
        return {}
    kind, name = owner
    if kind == "ReplicaSet":
        out = {"k8s.replicaset.name": name}
        pth = labels.get("pod-template-hash")
        if pth and name.endswith("-" + pth):
            out["k8s.deployment.name"] = name[: -len(pth) - 1]
        return out
    attr = {"StatefulSet": "k8s.statefulset.name", "DaemonSet": "k8s.daemonset.name", "Job": "k8s.job.name"}.get(kind)
    return {attr: name} if attr else {}


def parse_pod_list(text: str, source: str) -> list[PodInfo]:
    """The pods of a PodList document (YAML or JSON); pods lacking what is needed are skipped
    with a warning naming them."""
    try:
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InventoryError(
            f"{source}: not YAML or JSON ({str(exc).splitlines()[0]}); expected a Kubernetes PodList"
        ) from exc
    if not isinstance(doc, Mapping) or doc.get("kind") != "PodList" or not isinstance(doc.get("items", []), list):
        kind = doc.get("kind") if isinstance(doc, Mapping) else type(doc).__name__
        if kind is None:
            kind = "none"
        raise InventoryError(f"{source}: kind {kind!r} is not a PodList; expected `kubectl get pods -o yaml` output")
    pods: list[PodInfo] = []
    for i, item in enumerate(doc.get("items") or []):
        if not isinstance(item, Mapping):
            _logger.warning("%s: items[%d] is not a Pod object; skipped", source, i)
            continue
        got = pod_from_object(item)
        if isinstance(got, str):
            raw_meta = item.get("metadata")
            meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
            who = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
            _logger.warning("%s: pod %s (items[%d]) skipped: %s", source, who, i, got)
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
            pods = parse_pod_list(self.path.read_text(), str(self.path))
        except InventoryError:
            if self._stamp is None:
                raise
            _logger.exception("pods file %s is invalid now; keeping the last view", self.path)
            self._stamp = stamp
            return False
        self._stamp = stamp
        mine = {p.uid: p for p in pods if not p.node_name or not self.node_name or p.node_name == self.node_name}
        changed = mine != self._pods
        self._pods = mine
        _logger.info("pods file %s: %d pods on node %s", self.path, len(mine), self.node_name or "(any)")
        return changed

    def pods(self) -> Mapping[str, PodInfo]:
        return self._pods

    def close(self) -> None:
        pass


class NoPods:
    """Host mode: no inventory, pods are known by the UID in their cgroup name only."""

    def refresh(self) -> bool:
        return False

    def pods(self) -> Mapping[str, PodInfo]:
        return {}

    def close(self) -> None:
        pass
