"""The cluster's pods and Services as peers: IP → workload, ClusterIP → Service.

Pure data structures over objects as the API returns them (plain dicts from JSON); the
watches that feed them live in otel_podnet.kube (the only module that imports
``kubernetes``). Only what a peer lookup needs is kept, never the objects:

- a pod: its UID, IPs, workload (namespace, name, kind) and whether it is being deleted.
  Pods without an IP or finished (Succeeded, Failed: their IP may already be another
  pod's) are not kept; a pod on the host network is no pod peer (its IP is its node's):
  its IPs are kept as node addresses (:meth:`PeerTables.node_ips`). The workload is derived
  from the pod alone, with no request per owner: a ReplicaSet named ``<name>-<hash>``
  whose pod carries ``pod-template-hash=<hash>`` is Deployment ``<name>`` (the Deployment
  controller's naming); a Job named ``<name>-<minutes>`` (a scheduled time in minutes
  since the epoch, eight or nine digits, not in the future) is CronJob ``<name>`` (the
  CronJob controller's naming); StatefulSets and DaemonSets name themselves; any other
  pod is its own workload (kind ``pod``). Equal workloads are one shared object.
- a Service: its ClusterIPs (none for headless and ExternalName Services).
- an EndpointSlice: its Service and its ready endpoints (pod UID from ``targetRef``, and
  address). A Service's backends are the distinct workloads of those pods, computed when
  asked and cached until anything changes.

Two live pods may claim one IP for a while (a pod being deleted keeps its IP in the API
after the network released it for a new one): the newest claim of a pod not being deleted
wins, and when the winner goes the IP goes back to the remaining claimant.

:class:`PeerTables` holds the three indexes behind one lock, so the collection loop may
look up while a watch thread applies events or installs a relisted index.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from .owners import controller_of
from .peerinfo import PeerWorkload, ServiceRef

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_CRONJOB_JOB = re.compile(r"(.+)-([1-9][0-9]{7,8})")


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def canonical_ip(text: Any) -> str | None:
    """``text`` as ipaddress writes it (IPv4-mapped IPv6 as IPv4), or None when it is no IP."""
    if not isinstance(text, str) or not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def cronjob_of_job(name: str, now: float | None = None) -> str | None:
    """The CronJob that named Job ``name`` (``<cronjob>-<scheduled minutes>``), else None."""
    m = _CRONJOB_JOB.fullmatch(name)
    if m is None:
        return None
    if int(m.group(2)) * 60 > (time.time() if now is None else now) + 86400:
        return None  # not a scheduled time: a future one is no CronJob's
    return m.group(1)


def peer_workload(
    namespace: str, pod_name: str, owner: tuple[str, str] | None, labels: Mapping[str, Any]
) -> PeerWorkload:
    """The workload of a pod, from its controller and labels alone (see the module docstring)."""
    if owner is not None:
        kind, name = owner
        if kind == "ReplicaSet":
            pth = labels.get("pod-template-hash")
            if isinstance(pth, str) and pth and len(name) > len(pth) + 1 and name.endswith("-" + pth):
                return PeerWorkload(namespace, name[: -len(pth) - 1], "deployment")
        elif kind == "StatefulSet":
            return PeerWorkload(namespace, name, "statefulset")
        elif kind == "DaemonSet":
            return PeerWorkload(namespace, name, "daemonset")
        elif kind == "Job":
            cronjob = cronjob_of_job(name)
            return PeerWorkload(namespace, cronjob, "cronjob") if cronjob else PeerWorkload(namespace, name, "job")
    return PeerWorkload(namespace, pod_name, "pod")


class PodPeer(NamedTuple):
    uid: str
    ips: tuple[str, ...]
    workload: PeerWorkload
    terminating: bool
    host_network: bool = False  # its IPs are its node's: kept as node addresses, never a pod's


def pod_peer(obj: Mapping[str, Any]) -> PodPeer | None:
    """What a peer lookup needs of a pod object, or None when it is not kept (no UID, no
    IP, finished)."""
    meta, spec, status = _map(obj.get("metadata")), _map(obj.get("spec")), _map(obj.get("status"))
    uid, namespace, name = _str(meta.get("uid")), _str(meta.get("namespace")), _str(meta.get("name"))
    if not uid or not namespace or not name:
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    raw = [_map(e).get("ip") for e in status.get("podIPs") or () if isinstance(e, Mapping)]
    if not raw:
        raw = [status.get("podIP")]
    ips: list[str] = []
    for text in raw:
        ip = canonical_ip(text)
        if ip is not None and ip not in ips:
            ips.append(sys.intern(ip))
    if not ips:
        return None
    labels = _map(meta.get("labels"))
    workload = peer_workload(sys.intern(namespace), name, controller_of(obj), labels)
    host = spec.get("hostNetwork") is True
    return PodPeer(sys.intern(uid), tuple(ips), workload, bool(meta.get("deletionTimestamp")), host)


def uid_of(obj: Mapping[str, Any]) -> str:
    return _str(_map(obj.get("metadata")).get("uid"))


class PodIndex:
    """Pods by UID and by IP (see the module docstring for IPs claimed twice)."""

    def __init__(self) -> None:
        self.pods: dict[str, PodPeer] = {}
        self.by_ip: dict[str, str] = {}
        self.claims: dict[str, list[str]] = {}  # only IPs more than one pod claims, oldest claim first
        self.host_pods: dict[str, tuple[str, ...]] = {}  # host-network pods: UID -> IPs (their nodes')
        self.node_ips: dict[str, int] = {}  # IP -> how many host-network pods have it
        self._workloads: dict[PeerWorkload, PeerWorkload] = {}

    def __len__(self) -> int:
        return len(self.pods)

    def lookup(self, ip: str) -> PeerWorkload | None:
        uid = self.by_ip.get(ip)
        return self.pods[uid].workload if uid is not None else None

    def apply(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """One watch event (or a listed item as ADDED); True when a lookup may answer otherwise."""
        peer = pod_peer(obj) if kind != DELETED else None
        if peer is None:
            return self.remove(uid_of(obj))
        return self.upsert(peer)

    def upsert(self, peer: PodPeer) -> bool:
        if peer.host_network:
            return self._host_pod(peer.uid, peer.ips)
        old = self.pods.get(peer.uid)
        if old == peer:
            return False  # a status change that does not touch what we keep
        workload = self._workloads.setdefault(peer.workload, peer.workload)
        if len(self._workloads) > 2 * len(self.pods) + 1024:
            self._prune_workloads()
        peer = peer._replace(workload=workload)
        self.pods[peer.uid] = peer
        for ip in old.ips if old is not None else ():
            if ip not in peer.ips:
                self._release(peer.uid, ip)
        for ip in peer.ips:
            self._claim(peer.uid, ip)
        return True

    def _host_pod(self, uid: str, ips: tuple[str, ...]) -> bool:
        """A host-network pod with ``ips`` (none: gone); True when the node addresses changed."""
        old = self.host_pods.pop(uid, ())
        if ips:
            self.host_pods[uid] = ips
        if old == ips:
            return False
        for ip in old:
            if self.node_ips[ip] == 1:
                del self.node_ips[ip]
            else:
                self.node_ips[ip] -= 1
        for ip in ips:
            self.node_ips[ip] = self.node_ips.get(ip, 0) + 1
        return True

    def remove(self, uid: str) -> bool:
        if uid in self.host_pods:
            return self._host_pod(uid, ())
        peer = self.pods.pop(uid, None)
        if peer is None:
            return False
        for ip in peer.ips:
            self._release(uid, ip)
        return True

    def _prune_workloads(self) -> None:
        self._workloads = {p.workload: p.workload for p in self.pods.values()}

    def _choose(self, uids: list[str]) -> str:
        live = [u for u in uids if not self.pods[u].terminating]
        return (live or uids)[-1]

    def _claim(self, uid: str, ip: str) -> None:
        current = self.by_ip.get(ip)
        if current is None:
            self.by_ip[ip] = uid
            return
        if current == uid and ip not in self.claims:
            return
        claimants = self.claims.setdefault(ip, [current])
        if uid not in claimants:
            claimants.append(uid)
        self.by_ip[ip] = self._choose(claimants)

    def _release(self, uid: str, ip: str) -> None:
        claimants = self.claims.get(ip)
        if claimants is None:
            if self.by_ip.get(ip) == uid:
                del self.by_ip[ip]
            return
        if uid in claimants:
            claimants.remove(uid)
        if len(claimants) <= 1:
            del self.claims[ip]
        if claimants:
            self.by_ip[ip] = self._choose(claimants)
        else:
            self.by_ip.pop(ip, None)


ServiceKey = tuple[str, str]  # (namespace, name)


def service_ips(obj: Mapping[str, Any]) -> tuple[ServiceKey, tuple[str, ...]] | None:
    """(namespace, name) of a Service and its ClusterIPs (empty when headless or
    ExternalName), or None without a name."""
    meta, spec = _map(obj.get("metadata")), _map(obj.get("spec"))
    namespace, name = _str(meta.get("namespace")), _str(meta.get("name"))
    if not namespace or not name:
        return None
    key = (sys.intern(namespace), sys.intern(name))
    if spec.get("type") == "ExternalName":
        return key, ()
    raw = spec.get("clusterIPs") or [spec.get("clusterIP")]
    ips: list[str] = []
    for text in raw if isinstance(raw, list) else []:
        ip = canonical_ip(text)  # "None" (headless) is no IP
        if ip is not None and ip not in ips:
            ips.append(sys.intern(ip))
    return key, tuple(ips)


class ServiceIndex:
    """Services by ClusterIP."""

    def __init__(self) -> None:
        self.ips: dict[ServiceKey, tuple[str, ...]] = {}
        self.by_ip: dict[str, ServiceKey] = {}

    def __len__(self) -> int:
        return len(self.ips)

    def apply(self, kind: str, obj: Mapping[str, Any]) -> bool:
        got = service_ips(obj)
        if got is None:
            return False
        key, ips = got
        if kind == DELETED:
            ips = ()
        old = self.ips.get(key, ())
        if old == ips:
            return False  # never stored empty: a Service without ClusterIPs is not kept
        for ip in old:
            if ip not in ips and self.by_ip.get(ip) == key:
                del self.by_ip[ip]
        if ips:
            self.ips[key] = ips
            for ip in ips:
                self.by_ip[ip] = key
        else:
            self.ips.pop(key, None)
        return True


class Endpoint(NamedTuple):
    pod_uid: str  # "" when the endpoint names no pod
    address: str  # "" when it has no IP address (an FQDN slice)


def slice_endpoints(obj: Mapping[str, Any]) -> tuple[str, ServiceKey, tuple[Endpoint, ...]] | None:
    """(UID, its Service, its ready endpoints) of an EndpointSlice, or None when it belongs
    to no Service."""
    meta = _map(obj.get("metadata"))
    uid, namespace = _str(meta.get("uid")), _str(meta.get("namespace"))
    service = _str(_map(meta.get("labels")).get(SERVICE_NAME_LABEL))
    if not uid or not namespace or not service:
        return None
    ip_slice = obj.get("addressType") in ("IPv4", "IPv6")
    out: list[Endpoint] = []
    for ep in obj.get("endpoints") or ():
        if not isinstance(ep, Mapping) or _map(ep.get("conditions")).get("ready") is False:
            continue  # "ready" unset means ready (discovery.k8s.io/v1)
        target = _map(ep.get("targetRef"))
        pod_uid = _str(target.get("uid")) if target.get("kind") == "Pod" else ""
        addresses = ep.get("addresses") if ip_slice else None
        address = canonical_ip(addresses[0]) if isinstance(addresses, list) and addresses else None
        if pod_uid or address:
            out.append(Endpoint(sys.intern(pod_uid), sys.intern(address or "")))
    return sys.intern(uid), (sys.intern(namespace), sys.intern(service)), tuple(out)


class SliceIndex:
    """Ready endpoints by Service, from its EndpointSlices."""

    def __init__(self) -> None:
        self.service_of: dict[str, ServiceKey] = {}  # slice UID -> Service
        self.of_service: dict[ServiceKey, dict[str, tuple[Endpoint, ...]]] = {}

    def __len__(self) -> int:
        return len(self.service_of)

    def apply(self, kind: str, obj: Mapping[str, Any]) -> bool:
        got = slice_endpoints(obj)
        uid = got[0] if got is not None else uid_of(obj)
        changed = False
        old_key = self.service_of.get(uid)
        if old_key is not None and (kind == DELETED or got is None or got[1] != old_key):
            slices = self.of_service[old_key]
            del slices[uid]
            if not slices:
                del self.of_service[old_key]
            del self.service_of[uid]
            changed = True
        if kind == DELETED or got is None:
            return changed
        _, key, endpoints = got
        slices = self.of_service.setdefault(key, {})
        if slices.get(uid) == endpoints and self.service_of.get(uid) == key:
            return changed
        slices[uid] = endpoints
        self.service_of[uid] = key
        return True

    def endpoints(self, key: ServiceKey) -> list[Endpoint]:
        return [ep for eps in self.of_service.get(key, {}).values() for ep in eps]


class PeerTables:
    """The three indexes behind one lock: a PeerDirectory (otel_podnet.peerinfo).

    Watch threads :meth:`apply` events to the live indexes or :meth:`install` a whole
    relisted one; the collection loop calls :meth:`pod_by_ip` and :meth:`service_by_ip`."""

    KINDS = ("pods", "services", "endpointslices")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods = PodIndex()
        self._services = ServiceIndex()
        self._slices = SliceIndex()
        self._generation = 0
        self._refs: dict[ServiceKey, tuple[int, ServiceRef]] = {}
        self._node_ips: tuple[int, frozenset[str]] | None = None

    @staticmethod
    def fresh(kind: str) -> PodIndex | ServiceIndex | SliceIndex:
        """An empty index of ``kind`` to fill from a list before :meth:`install`."""
        if kind == "pods":
            return PodIndex()
        if kind == "services":
            return ServiceIndex()
        if kind == "endpointslices":
            return SliceIndex()
        raise ValueError(f"no index of {kind}")

    def install(self, kind: str, index: PodIndex | ServiceIndex | SliceIndex) -> None:
        """Make ``index`` (filled from a list) the live one of ``kind``."""
        with self._lock:
            if kind == "pods" and isinstance(index, PodIndex):
                self._pods = index
            elif kind == "services" and isinstance(index, ServiceIndex):
                self._services = index
            elif kind == "endpointslices" and isinstance(index, SliceIndex):
                self._slices = index
            else:
                raise ValueError(f"{type(index).__name__} is not an index of {kind}")
            self._changed()

    def apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> None:
        """One ADDED/MODIFIED/DELETED watch event of ``kind`` to the live index."""
        with self._lock:
            index: PodIndex | ServiceIndex | SliceIndex
            if kind == "pods":
                index = self._pods
            elif kind == "services":
                index = self._services
            else:
                index = self._slices
            if index.apply(event_type, obj):
                self._changed()

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {"pods": len(self._pods), "services": len(self._services), "endpointslices": len(self._slices)}

    def _changed(self) -> None:
        self._generation += 1
        if len(self._refs) > 4096:
            self._refs.clear()

    # -- PeerDirectory ----------------------------------------------------------------------

    def pod_by_ip(self, ip: str) -> PeerWorkload | None:
        with self._lock:
            found = self._pods.lookup(ip)
        if found is None and not _plain(ip):
            canonical = canonical_ip(ip)
            if canonical is not None and canonical != ip:
                return self.pod_by_ip(canonical)
        return found

    def node_ips(self) -> frozenset[str]:
        """The addresses of host-network pods: their nodes' own (kube-proxy, CNI agents and
        the like run on every node), so the node peers of the whole cluster."""
        with self._lock:
            cached = self._node_ips
            if cached is None or cached[0] != self._generation:
                cached = self._node_ips = (self._generation, frozenset(self._pods.node_ips))
            return cached[1]

    def service_by_ip(self, ip: str) -> ServiceRef | None:
        with self._lock:
            key = self._services.by_ip.get(ip)
            if key is None:
                canonical = None if _plain(ip) else canonical_ip(ip)
                if canonical is None or canonical == ip:
                    return None
                key = self._services.by_ip.get(canonical)
                if key is None:
                    return None
            cached = self._refs.get(key)
            if cached is not None and cached[0] == self._generation:
                return cached[1]
            ref = ServiceRef(key[0], key[1], self._backends(key))
            self._refs[key] = (self._generation, ref)
            return ref

    def _backends(self, key: ServiceKey) -> tuple[PeerWorkload, ...]:
        seen: dict[PeerWorkload, None] = {}
        pods = self._pods
        for ep in self._slices.endpoints(key):
            peer = pods.pods.get(ep.pod_uid) if ep.pod_uid else None
            workload = peer.workload if peer is not None else (pods.lookup(ep.address) if ep.address else None)
            if workload is not None:
                seen[workload] = None
        return tuple(sorted(seen, key=_workload_order))


def _workload_order(w: PeerWorkload) -> tuple[str, str, str]:
    return (w.namespace, w.workload, w.kind)


def _plain(ip: str) -> bool:
    """True when ``ip`` is written as canonical_ip writes it, as far as a cheap look tells
    (a dotted IPv4 address): no need to parse it again after a miss."""
    return ":" not in ip
