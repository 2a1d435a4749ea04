"""The metrics of CONTRACT.md as series: (metric, point attributes, value) per owner.

Shared by every exporter, so OTLP, Prometheus and the tests see the same figures.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def pod_series(c: Counters) -> Iterator[tuple[MetricDef, Attrs, int]]:
    d = "podnet.direction"
    yield OPENED, ((d, "outbound"),), c.opened_out
    yield OPENED, ((d, "inbound"),), c.opened_in
    yield CLOSED, ((d, "outbound"),), c.closed_out
    yield CLOSED, ((d, "inbound"),), c.closed_in
    yield ACTIVE, ((d, "outbound"),), c.active_out
    yield ACTIVE, ((d, "inbound"),), c.active_in
    for reason, v in c.failed.items():
        yield FAILED, (("error.type", reason),), v
    io, tr = "network.io.direction", "network.transport"
    yield IO, ((io, "transmit"), (tr, "tcp")), c.bytes_tx_tcp
    yield IO, ((io, "transmit"), (tr, "udp")), c.bytes_tx_udp
    yield IO, ((io, "receive"), (tr, "tcp")), c.bytes_rx_tcp
    yield IO, ((io, "receive"), (tr, "udp")), c.bytes_rx_udp
    yield PACKETS, ((io, "transmit"), (tr, "tcp")), c.packets_tx_tcp
    yield PACKETS, ((io, "transmit"), (tr, "udp")), c.packets_tx_udp
    yield PACKETS, ((io, "receive"), (tr, "tcp")), c.packets_rx_tcp
    yield PACKETS, ((io, "receive"), (tr, "udp")), c.packets_rx_udp
    yield PAYLOAD, ((io, "transmit"),), c.payload_tx
    yield PAYLOAD, ((io, "receive"),), c.payload_rx
    yield RETRANSMITS, (), c.retransmits
    yield RESETS, ((io, "transmit"),), c.resets_tx
    yield RESETS, ((io, "receive"),), c.resets_rx


def peer_series(
    peers: tuple[tuple[Attrs, tuple[int, ...]], ...],
) -> Iterator[tuple[MetricDef, Attrs, int]]:
    """A sample's peer series (abi.PEER_FIELDS order); a point only where the figure is not
    zero (a series that never had a failure has no failure points)."""
    io, d = "network.io.direction", "podnet.direction"
    for attrs, v in peers:
        points = (
            (PEER_IO, ((io, "transmit"),), v[0]),
            (PEER_IO, ((io, "receive"),), v[1]),
            (PEER_OPENED, ((d, "outbound"),), v[2]),
            (PEER_OPENED, ((d, "inbound"),), v[3]),
            *((PEER_FAILED, (("error.type", t),), v[4 + i]) for i, t in enumerate(FAILED_TYPES)),
        )
        for md, a, value in points:
            if value:
                yield md, a + attrs, value


FAILED_TYPES = ("refused", "timeout", "unreachable", "reset", "other")


def pod_histograms(c: Counters) -> Iterator[tuple[MetricDef, Attrs, Histogram]]:
    d = "podnet.direction"
    yield CONNECT_DURATION, ((d, "outbound"),), c.connect_out
    yield CONNECT_DURATION, ((d, "inbound"),), c.connect_in
    yield RTT, ((d, "outbound"),), c.rtt_out
    yield RTT, ((d, "inbound"),), c.rtt_in


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
