"""Counter samples: what the kernel counted for one pod (or the node), summed over CPUs."""

from __future__ import annotations

import dataclasses
import operator
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .abi import COUNTER_FIELDS, HIST_BOUNDS_US, HIST_BUCKETS, HIST_WORDS, HISTOGRAMS

HIST_ZERO: tuple[int, ...] = (0,) * (len(HISTOGRAMS) * HIST_WORDS)


@dataclass(frozen=True)
class Histogram:
    """A latency histogram as the kernel keeps it: counts per power-of-two bucket of
    microseconds (``HIST_BOUNDS_US``, upper bounds inclusive, then an overflow bucket) and
    the exact sum of the values in nanoseconds."""

    buckets: tuple[int, ...] = (0,) * HIST_BUCKETS
    sum_ns: int = 0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    @property
    def sum_seconds(self) -> float:
        return self.sum_ns / 1e9

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram(
            tuple(a - b for a, b in zip(self.buckets, other.buckets, strict=True)), self.sum_ns - other.sum_ns
        )

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)), self.sum_ns + other.sum_ns
        )

    def quantile(self, q: float) -> float | None:
        """The upper bound, in seconds, of the bucket that holds quantile ``q`` (None when
        empty; the last finite bound when it falls in the overflow bucket)."""
        total = self.count
        if not total:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank and n:
                return HIST_BOUNDS_US[min(i, len(HIST_BOUNDS_US) - 1)] / 1e6
        return HIST_BOUNDS_US[-1] / 1e6


@dataclass(frozen=True)
class Counters:
    """Monotonic counters of one owner; field order is struct podnet_counters'."""

    bytes_tx_tcp: int = 0
    bytes_tx_udp: int = 0
    bytes_rx_tcp: int = 0
    bytes_rx_udp: int = 0
    packets_tx_tcp: int = 0
    packets_tx_udp: int = 0
    packets_rx_tcp: int = 0
    packets_rx_udp: int = 0
    payload_tx: int = 0
    payload_rx: int = 0
    opened_out: int = 0
    opened_in: int = 0
    adopted_out: int = 0
    adopted_in: int = 0
    closed_out: int = 0
    closed_in: int = 0
    failed_refused: int = 0
    failed_timeout: int = 0
    failed_unreachable: int = 0
    failed_reset: int = 0
    failed_other: int = 0
    retransmits: int = 0
    resets_tx: int = 0
    resets_rx: int = 0
    # the latency histograms (abi.HISTOGRAMS), flat as in the kernel
    hist: tuple[int, ...] = HIST_ZERO

    @classmethod
    def from_values(cls, values: Iterable[int]) -> Counters:
        """From struct podnet_counters' words in order (the histograms may be absent)."""
        v = tuple(values)
        n = len(COUNTER_FIELDS)
        if len(v) < n:
            return cls(*v, hist=HIST_ZERO)  # type: ignore[arg-type, misc]
        # What __init__ would set, without its object.__setattr__ per field (frozen): this
        # runs for every slot that changed, every interval (issue 10).
        c = object.__new__(cls)
        d = c.__dict__
        d.update(zip(COUNTER_FIELDS, v, strict=False))  # the histogram words follow
        d["hist"] = v[n:] or HIST_ZERO
        return c

    @classmethod
    def from_row(cls, raw: bytes) -> Counters:
        """From a struct podnet_counters as the kernel stores it (little-endian words, the
        histograms included): unpacked in two parts, straight into the fields and the
        histograms, without the whole row's tuple in between (issue 10)."""
        c = object.__new__(cls)
        d = c.__dict__
        d.update(zip(COUNTER_FIELDS, _ROW_FIELDS.unpack_from(raw), strict=True))
        d["hist"] = _ROW_HIST.unpack_from(raw, _ROW_FIELDS.size)
        return c

    def values(self) -> tuple[int, ...]:
        return _counter_fields(self) + self.hist

    def __add__(self, other: Counters) -> Counters:
        # zero is common (a pod's IP-fallback slot beside its cgroup's): no new object
        if other is ZERO:
            return self
        if self is ZERO:
            return other
        return Counters.from_values(map(operator.add, self.values(), other.values()))

    def histogram(self, name: str) -> Histogram:
        """One of abi.HISTOGRAMS: ``connect_out``, ``connect_in``, ``rtt_out``, ``rtt_in``."""
        i = HISTOGRAMS.index(name) * HIST_WORDS
        return Histogram(self.hist[i : i + HIST_BUCKETS], self.hist[i + HIST_BUCKETS])

    @property
    def connect_out(self) -> Histogram:
        return self.histogram("connect_out")

    @property
    def connect_in(self) -> Histogram:
        return self.histogram("connect_in")

    @property
    def rtt_out(self) -> Histogram:
        return self.histogram("rtt_out")

    @property
    def rtt_in(self) -> Histogram:
        return self.histogram("rtt_in")

    @property
    def active_out(self) -> int:
        """Outbound connections established now (never negative)."""
        return max(0, self.opened_out + self.adopted_out - self.closed_out)

    @property
    def active_in(self) -> int:
        return max(0, self.opened_in + self.adopted_in - self.closed_in)

    @property
    def failed(self) -> Mapping[str, int]:
        """Failed outbound attempts by ``error.type``."""
        return {
            "refused": self.failed_refused,
            "timeout": self.failed_timeout,
            "unreachable": self.failed_unreachable,
            "reset": self.failed_reset,
            "other": self.failed_other,
        }


assert tuple(f.name for f in dataclasses.fields(Counters)) == (*COUNTER_FIELDS, "hist")

_counter_fields = operator.attrgetter(*COUNTER_FIELDS)
_ROW_FIELDS = struct.Struct(f"<{len(COUNTER_FIELDS)}Q")
_ROW_HIST = struct.Struct(f"<{len(HIST_ZERO)}Q")
ZERO = Counters()  # the one zero: datapath.read_slots returns it for an all-zero slot


@dataclass(frozen=True)
class PodSample:
    """One owner's figures at one collection. ``uid`` is None for the node."""

    uid: str | None
    counters: Counters
    final: bool = False  # the pod is gone: this is its last sample
    # peers (issue 12): (peer attributes, cumulative figures in abi.PEER_FIELDS order) per
    # series, at most --max-peers of them plus podnet.peer.kind=other
    peers: tuple[tuple[tuple[tuple[str, str], ...], tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Health:
    """The agent's own figures for one collection."""

    pods: int
    slots_in_use: int
    slots_capacity: int
    cgroups_tracked: int
    cgroups_capacity: int
    slots_exhausted: int
    cgroups_full: int
    no_storage: int
    collection_seconds: float = 0.0
    pod_ips_tracked: int = 0
    pod_ips_capacity: int = 0
    pods_exhausted_cgroup: int = 0  # pods counted as the node's: no free slot for their cgroups
    pods_exhausted_ip: int = 0  # ... no free slot for their IP fallback
    cgroups_refused: int = 0  # cgroups the agent could not register: podnet_cgroups full
    pod_ips_refused: int = 0  # pod IPs the agent could not add: podnet_pod_ips full
    collection_failures: int = 0  # collections that failed after start (the agent went on)
    peer_rows_tracked: int = 0  # peers (issue 12): rows taken in podnet_peer_stats
    peer_rows_capacity: int = 0
    peers_full: int = 0  # times the kernel found no free peer row (traffic went to kind=other)


@dataclass(frozen=True)
class Snapshot:
    samples: tuple[PodSample, ...]
    health: Health
    extra: Mapping[str, str] = field(default_factory=dict)
