"""The peer directory: which workload (or Service) an IP address of the cluster belongs to.

The interface the peer metrics (otel_podnet.peers) are resolved against, and which each pod
source provides: :class:`StaticPeerDirectory` here, built from a list of pods (and Services)
as the pods file gives them; the Kubernetes API source keeps its own, fed by a watch of the
cluster's pods and Services (otel_podnet.kube).

A pod's workload is its Deployment, StatefulSet, DaemonSet, CronJob or Job (from its
controlling owner, as otel_podnet.owners derives it), else the pod itself (kind ``pod``).
A Service's backends are the distinct workloads of its ready endpoints.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .inventory import LIVE_PHASES, PodInfo


@dataclass(frozen=True)
class PeerWorkload:
    namespace: str
    workload: str  # Deployment/StatefulSet/DaemonSet/Job/CronJob name, else the pod name
    kind: str  # "deployment"|"statefulset"|"daemonset"|"job"|"cronjob"|"pod"


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    backends: tuple[PeerWorkload, ...]  # distinct workloads of its ready endpoints (may be empty)


class PeerDirectory(Protocol):
    def pod_by_ip(self, ip: str) -> PeerWorkload | None: ...
    def service_by_ip(self, ip: str) -> ServiceRef | None: ...  # ClusterIPs


# The workload attributes of PodInfo.workload, most specific owner first: a Job of a
# CronJob is the CronJob's, a ReplicaSet of a Deployment the Deployment's.
_WORKLOAD_ATTRS = (
    ("k8s.deployment.name", "deployment"),
    ("k8s.statefulset.name", "statefulset"),
    ("k8s.daemonset.name", "daemonset"),
    ("k8s.cronjob.name", "cronjob"),
    ("k8s.job.name", "job"),
)


def workload_of(pod: PodInfo) -> PeerWorkload:
    """A pod's workload; a pod of no workload (or of a bare ReplicaSet) is its own."""
    for attr, kind in _WORKLOAD_ATTRS:
        name = pod.workload.get(attr)
        if name:
            return PeerWorkload(pod.namespace, name, kind)
    return PeerWorkload(pod.namespace, pod.name, "pod")


def _serves(pod: PodInfo) -> bool:
    """A pod that is an endpoint of its Services: Running and not terminating (the pods file
    carries no readiness the agent keeps; the API source uses EndpointSlices' ready)."""
    return pod.phase == "Running" and not pod.terminating and not pod.host_network


class StaticPeerDirectory:
    """A directory from a fixed list of pods and Services (ClusterIP -> Service).

    Pod IPs of live pods only (Pending or Running), never a hostNetwork pod's (that is its
    node's address: :meth:`node_ips`). Where two pods claim an IP the one the agent would
    keep for attribution wins (a running pod over a terminating one)."""

    def __init__(self, pods: Iterable[PodInfo] = (), services: Mapping[str, ServiceRef] | None = None) -> None:
        self._pods: dict[str, PeerWorkload] = {}
        self._node_ips: set[str] = set()
        for p in sorted(pods, key=lambda p: (p.ip_claim_rank, p.uid)):
            if p.host_network:
                self._node_ips.update(p.ips)
            elif p.phase in LIVE_PHASES:
                for ip in p.ips:
                    self._pods[ip] = workload_of(p)
        self._services = {str(ipaddress.ip_address(ip)): s for ip, s in (services or {}).items()}

    def pod_by_ip(self, ip: str) -> PeerWorkload | None:
        return self._pods.get(ip)

    def service_by_ip(self, ip: str) -> ServiceRef | None:
        return self._services.get(ip)

    def node_ips(self) -> frozenset[str]:
        """The addresses of hostNetwork pods: their nodes' own addresses."""
        return frozenset(self._node_ips)


def services_from_objects(objs: Iterable[Mapping[str, Any]], pods: Iterable[PodInfo]) -> dict[str, ServiceRef]:
    """ClusterIP -> Service, from Service objects as ``kubectl get services -o yaml`` writes
    them, with their backends from the pods their selector matches (Running ones). Services
    without a selector or without a ClusterIP (headless, ExternalName) are left out; an
    unusable object is skipped."""
    live = [p for p in pods if _serves(p)]
    out: dict[str, ServiceRef] = {}
    for obj in objs:
        meta, spec = obj.get("metadata"), obj.get("spec")
        if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
            continue
        ns, name, selector = meta.get("namespace") or "default", meta.get("name"), spec.get("selector")
        if not isinstance(name, str) or not isinstance(ns, str) or not isinstance(selector, Mapping) or not selector:
            continue
        ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
        backends = tuple(
            dict.fromkeys(
                workload_of(p)
                for p in sorted(live, key=lambda p: p.name)
                if p.namespace == ns and all(p.labels.get(k) == v for k, v in selector.items())
            )
        )
        ref = ServiceRef(ns, name, backends)
        for ip in ips if isinstance(ips, list) else []:
            try:
                out[str(ipaddress.ip_address(ip))] = ref
            except (ValueError, TypeError):
                continue  # "None" (headless) and garbage
    return out


def directory_from_text(text: str, pods: list[PodInfo]) -> StaticPeerDirectory:
    """The directory of a pods file: its pods and the Services it lists among them."""
    import json

    import yaml

    try:
        docs: list[Any] = [json.loads(text)] if text.lstrip().startswith("{") else list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError):
        docs = []
    services: list[Mapping[str, Any]] = []
    for doc in docs:
        if not isinstance(doc, Mapping):
            continue
        items = doc.get("items") if doc.get("kind") in ("List", "ServiceList") else [doc]
        for item in items if isinstance(items, list) else []:
            if isinstance(item, Mapping) and (item.get("kind") == "Service" or doc.get("kind") == "ServiceList"):
                services.append(item)
    return StaticPeerDirectory(pods, services_from_objects(services, pods))
