"""Counter samples: what the kernel counted for one pod (or the node), summed over CPUs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .abi import COUNTER_FIELDS


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

    @classmethod
    def from_values(cls, values: Iterable[int]) -> Counters:
        return cls(*values)

    def values(self) -> tuple[int, ...]:
        return dataclasses.astuple(self)

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

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


assert tuple(f.name for f in dataclasses.fields(Counters)) == COUNTER_FIELDS

ZERO = Counters()


@dataclass(frozen=True)
class PodSample:
    """One owner's figures at one collection. ``uid`` is None for the node."""

    uid: str | None
    counters: Counters
    final: bool = False  # the pod is gone: this is its last sample


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


@dataclass(frozen=True)
class Snapshot:
    samples: tuple[PodSample, ...]
    health: Health
    extra: Mapping[str, str] = field(default_factory=dict)
