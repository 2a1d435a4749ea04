"""The metrics of CONTRACT.md as series: (metric, point attributes, value) per owner.

Shared by every exporter, so OTLP, Prometheus and the tests see the same figures.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .abi import HIST_BOUNDS_US
from .samples import Counters, Health, Histogram


@dataclass(frozen=True)
class MetricDef:
    name: str
    unit: str
    description: str
    monotonic: bool  # ObservableCounter; else ObservableUpDownCounter (or a gauge for health)
    gauge: bool = False


OPENED = MetricDef("podnet.tcp.connections.opened", "{connection}", "Connections that reached ESTABLISHED", True)
CLOSED = MetricDef("podnet.tcp.connections.closed", "{connection}", "Established connections that ended", True)
ACTIVE = MetricDef("podnet.tcp.connections.active", "{connection}", "Connections established right now", False)
FAILED = MetricDef("podnet.tcp.connections.failed", "{connection}", "Outbound attempts that never established", True)
IO = MetricDef("podnet.network.io", "By", "IP bytes as on the wire", True)
PACKETS = MetricDef("podnet.network.packets", "{packet}", "IP packets as on the wire", True)
PAYLOAD = MetricDef("podnet.tcp.payload", "By", "TCP payload bytes", True)
RETRANSMITS = MetricDef("podnet.tcp.retransmits", "{segment}", "Retransmitted TCP segments", True)
RESETS = MetricDef("podnet.tcp.resets", "{segment}", "TCP RST segments sent and received", True)

POD_METRICS = (OPENED, CLOSED, ACTIVE, FAILED, IO, PACKETS, PAYLOAD, RETRANSMITS, RESETS)

# Peers (issue 12): on the same Resources, one series per peer (see otel_podnet.peers).
PEER_IO = MetricDef("podnet.peer.network.io", "By", "IP bytes as on the wire, by peer", True)
PEER_OPENED = MetricDef("podnet.peer.tcp.connections.opened", "{connection}", "Connections by peer", True)
PEER_FAILED = MetricDef("podnet.peer.tcp.connections.failed", "{connection}", "Failed attempts by peer", True)
PEER_METRICS = (PEER_IO, PEER_OPENED, PEER_FAILED)

# Histograms (issue 11): explicit buckets at powers of two microseconds, in seconds.
CONNECT_DURATION = MetricDef("podnet.tcp.connect.duration", "s", "Time from a connection's SYN to ESTABLISHED", True)
RTT = MetricDef("podnet.tcp.rtt", "s", "The kernel's smoothed RTT of a connection", True)
HISTOGRAM_METRICS = (CONNECT_DURATION, RTT)
HIST_BOUNDS_S: tuple[float, ...] = tuple(us / 1e6 for us in HIST_BOUNDS_US)

H_PODS = MetricDef("podnet.agent.pods", "{pod}", "Pods this agent tracks", False, gauge=True)
H_ENTRIES = MetricDef("podnet.agent.map.entries", "{entry}", "BPF map entries in use", False, gauge=True)
H_CAPACITY = MetricDef("podnet.agent.map.capacity", "{entry}", "BPF map capacity", False, gauge=True)
H_LOST = MetricDef("podnet.agent.events.lost", "{event}", "Kernel events that could not be attributed", True)
H_EXPORT_FAILURES = MetricDef("podnet.agent.export.failures", "{export}", "Failed exports", True)
H_COLLECTION = MetricDef("podnet.agent.collection.duration", "s", "Time to collect one snapshot", False, gauge=True)

H_EXHAUSTED = MetricDef(
    "podnet.agent.slots.exhausted", "{pod}", "Pods counted as the node's until a counting slot freed", True
)
H_MAP_FULL = MetricDef("podnet.agent.map.full", "{entry}", "Entries the agent could not add: the map was full", True)
H_COLLECTION_FAILURES = MetricDef(
    "podnet.agent.collection.failures", "{collection}", "Collections that failed; the agent went on", True
)

HEALTH_METRICS = (
    H_PODS,
    H_ENTRIES,
    H_CAPACITY,
    H_LOST,
    H_EXHAUSTED,
    H_MAP_FULL,
    H_EXPORT_FAILURES,
    H_COLLECTION,
    H_COLLECTION_FAILURES,
)

Attrs = tuple[tuple[str, str], ...]


_D, _IO, _TR = "podnet.direction", "network.io.direction", "network.transport"

# A pod's number series in order: (metric, point attributes, the Counters attribute).
POD_SERIES: tuple[tuple[MetricDef, Attrs, str], ...] = (
    (OPENED, ((_D, "outbound"),), "opened_out"),
    (OPENED, ((_D, "inbound"),), "opened_in"),
    (CLOSED, ((_D, "outbound"),), "closed_out"),
    (CLOSED, ((_D, "inbound"),), "closed_in"),
    (ACTIVE, ((_D, "outbound"),), "active_out"),
    (ACTIVE, ((_D, "inbound"),), "active_in"),
    (FAILED, (("error.type", "refused"),), "failed_refused"),
    (FAILED, (("error.type", "timeout"),), "failed_timeout"),
    (FAILED, (("error.type", "unreachable"),), "failed_unreachable"),
    (FAILED, (("error.type", "reset"),), "failed_reset"),
    (FAILED, (("error.type", "other"),), "failed_other"),
    (IO, ((_IO, "transmit"), (_TR, "tcp")), "bytes_tx_tcp"),
    (IO, ((_IO, "transmit"), (_TR, "udp")), "bytes_tx_udp"),
    (IO, ((_IO, "receive"), (_TR, "tcp")), "bytes_rx_tcp"),
    (IO, ((_IO, "receive"), (_TR, "udp")), "bytes_rx_udp"),
    (PACKETS, ((_IO, "transmit"), (_TR, "tcp")), "packets_tx_tcp"),
    (PACKETS, ((_IO, "transmit"), (_TR, "udp")), "packets_tx_udp"),
    (PACKETS, ((_IO, "receive"), (_TR, "tcp")), "packets_rx_tcp"),
    (PACKETS, ((_IO, "receive"), (_TR, "udp")), "packets_rx_udp"),
    (PAYLOAD, ((_IO, "transmit"),), "payload_tx"),
    (PAYLOAD, ((_IO, "receive"),), "payload_rx"),
    (RETRANSMITS, (), "retransmits"),
    (RESETS, ((_IO, "transmit"),), "resets_tx"),
    (RESETS, ((_IO, "receive"),), "resets_rx"),
)
# The values of POD_SERIES for one Counters, in one call (an exporter's per-interval work).
pod_values: Callable[[Counters], tuple[int, ...]] = operator.attrgetter(*(f for _, _, f in POD_SERIES))


def pod_series(c: Counters) -> Iterator[tuple[MetricDef, Attrs, int]]:
    for (md, attrs, _), v in zip(POD_SERIES, pod_values(c), strict=True):
        yield md, attrs, v


# A peer's points in abi.PEER_FIELDS order: (metric, the attributes before the peer's).
PEER_POINTS: tuple[tuple[MetricDef, Attrs], ...] = (
    (PEER_IO, ((_IO, "transmit"),)),
    (PEER_IO, ((_IO, "receive"),)),
    (PEER_OPENED, ((_D, "outbound"),)),
    (PEER_OPENED, ((_D, "inbound"),)),
    *((PEER_FAILED, (("error.type", t),)) for t in ("refused", "timeout", "unreachable", "reset", "other")),
)


def peer_series(
    peers: tuple[tuple[Attrs, tuple[int, ...]], ...],
) -> Iterator[tuple[MetricDef, Attrs, int]]:
    """A sample's peer series (abi.PEER_FIELDS order); a point only where the figure is not
    zero (a series that never had a failure has no failure points)."""
    for attrs, v in peers:
        for (md, a), value in zip(PEER_POINTS, v, strict=True):
            if value:
                yield md, a + attrs, value


FAILED_TYPES = ("refused", "timeout", "unreachable", "reset", "other")


# A pod's histograms: (metric, point attributes, the Counters property).
POD_HISTOGRAMS: tuple[tuple[MetricDef, Attrs, str], ...] = (
    (CONNECT_DURATION, ((_D, "outbound"),), "connect_out"),
    (CONNECT_DURATION, ((_D, "inbound"),), "connect_in"),
    (RTT, ((_D, "outbound"),), "rtt_out"),
    (RTT, ((_D, "inbound"),), "rtt_in"),
)


def pod_histograms(c: Counters) -> Iterator[tuple[MetricDef, Attrs, Histogram]]:
    for d, attrs, name in POD_HISTOGRAMS:
        yield d, attrs, getattr(c, name)


def health_series(h: Health, export_failures: int) -> Iterator[tuple[MetricDef, Attrs, float]]:
    yield H_PODS, (), h.pods
    yield H_ENTRIES, (("podnet.map", "slots"),), h.slots_in_use
    yield H_ENTRIES, (("podnet.map", "cgroups"),), h.cgroups_tracked
    yield H_CAPACITY, (("podnet.map", "slots"),), h.slots_capacity
    yield H_ENTRIES, (("podnet.map", "pod_ips"),), h.pod_ips_tracked
    yield H_CAPACITY, (("podnet.map", "cgroups"),), h.cgroups_capacity
    yield H_CAPACITY, (("podnet.map", "pod_ips"),), h.pod_ips_capacity
    yield H_LOST, (("podnet.reason", "slots_exhausted"),), h.slots_exhausted
    yield H_LOST, (("podnet.reason", "cgroups_full"),), h.cgroups_full
    yield H_LOST, (("podnet.reason", "no_socket_storage"),), h.no_storage
    yield H_EXHAUSTED, (("podnet.slot.kind", "cgroup"),), h.pods_exhausted_cgroup
    yield H_EXHAUSTED, (("podnet.slot.kind", "ip"),), h.pods_exhausted_ip
    yield H_MAP_FULL, (("podnet.map", "cgroups"),), h.cgroups_refused
    yield H_MAP_FULL, (("podnet.map", "pod_ips"),), h.pod_ips_refused
    if h.peer_rows_capacity:  # peers (issue 12)
        yield H_ENTRIES, (("podnet.map", "peers"),), h.peer_rows_tracked
        yield H_CAPACITY, (("podnet.map", "peers"),), h.peer_rows_capacity
        yield H_MAP_FULL, (("podnet.map", "peers"),), h.peers_full
    yield H_EXPORT_FAILURES, (), export_failures
    yield H_COLLECTION, (), h.collection_seconds
    yield H_COLLECTION_FAILURES, (), h.collection_failures
