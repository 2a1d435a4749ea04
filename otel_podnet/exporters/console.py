"""``--exporter console``: a per-pod table on stdout every interval."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from ..inventory import PodInfo
from ..samples import Histogram, PodSample, Snapshot


def pod_label(sample: PodSample, pods: Mapping[str, PodInfo]) -> str:
    if sample.uid is None:
        return "(node)"
    pod = pods.get(sample.uid)
    return f"{pod.namespace}/{pod.name}" if pod else f"uid:{sample.uid}"


HEADER = (
    f"{'POD':<32} {'OPEN out/in':>13} {'CLOSED out/in':>13} {'ACTIVE out/in':>13} {'FAILED':>7} "
    f"{'TX bytes':>12} {'RX bytes':>12} {'TX pkts':>9} {'RX pkts':>9} {'TX payload':>12} {'RX payload':>12} "
    f"{'CONNECT ms p50/p99':>19} {'RTT ms p50/p99':>15}"
)


def percentiles(h: Histogram) -> str:
    """p50/p99 in milliseconds, each the upper bound of its power-of-two bucket."""
    p50, p99 = h.quantile(0.5), h.quantile(0.99)
    if p50 is None or p99 is None:
        return "-"
    return f"{p50 * 1e3:.3g}/{p99 * 1e3:.3g}"


def format_row(label: str, s: PodSample) -> str:
    c = s.counters
    return (
        f"{label[:32]:<32} {f'{c.opened_out}/{c.opened_in}':>13} {f'{c.closed_out}/{c.closed_in}':>13} "
        f"{f'{c.active_out}/{c.active_in}':>13} {sum(c.failed.values()):>7} "
        f"{c.bytes_tx_tcp + c.bytes_tx_udp:>12} {c.bytes_rx_tcp + c.bytes_rx_udp:>12} "
        f"{c.packets_tx_tcp + c.packets_tx_udp:>9} {c.packets_rx_tcp + c.packets_rx_udp:>9} "
        f"{c.payload_tx:>12} {c.payload_rx:>12} "
        f"{percentiles(c.connect_out + c.connect_in):>19} {percentiles(c.rtt_out + c.rtt_in):>15}"
    )


def peer_label(attrs: tuple[tuple[str, str], ...]) -> str:
    """A peer series as ``kind namespace/workload (workload kind) via service``."""
    a = dict(attrs)
    label = a.get("podnet.peer.kind", "?")
    if "podnet.peer.namespace" in a or "podnet.peer.workload" in a:
        where = "/".join(a[k] for k in ("podnet.peer.namespace", "podnet.peer.workload") if k in a)
        label += f" {where}"
    if "podnet.peer.workload.kind" in a:
        label += f" ({a['podnet.peer.workload.kind']})"
    if "podnet.peer.service" in a:
        label += f" via service {a['podnet.peer.service']}"
    return label


def format_peers(s: PodSample) -> list[str]:
    """One line per peer series (issue 12), busiest first, under the pod's row."""
    rows = sorted(s.peers, key=lambda p: -(p[1][0] + p[1][1]))
    return [
        f"    -> {peer_label(attrs)[:40]:<40} tx {v[0]:>12} rx {v[1]:>12} open {v[2]}/{v[3]} failed {sum(v[4:])}"
        for attrs, v in rows
    ]


class ConsoleExporter:
    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def export(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        lines = [HEADER]
        for s in snapshot.samples:
            lines.append(format_row(pod_label(s, pods) + (" (final)" if s.final else ""), s))
            lines += format_peers(s)
        h = snapshot.health
        lines.append(
            f"-- pods {h.pods}, slots {h.slots_in_use}/{h.slots_capacity}, cgroups {h.cgroups_tracked}/"
            f"{h.cgroups_capacity}, collected in {h.collection_seconds * 1000:.1f} ms"
        )
        self._out.write("\n".join(lines) + "\n\n")
        self._out.flush()

    def shutdown(self) -> None:
        pass
