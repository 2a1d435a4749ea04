"""``otel-podnet top``: this node's pods sorted by traffic, refreshed live, like ``kubectl top``.

Figures come from a running agent's ``/metrics`` (``--from HOST:PORT``) or from a datapath
of its own (root). Rates are differences between two readings over the time between them.
The agent's ``/metrics`` changes once per collection (its ``--interval``), so with ``--from``
a reading counts only when the page has changed, and its time is when the change was first
seen: rates then span whole collection intervals, whatever the polling period.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

from prometheus_client.parser import text_string_to_metric_families

from .inventory import PodInfo
from .samples import Snapshot

_logger = getLogger(__name__)

POLL_SECONDS = 0.25


class TopError(Exception):
    """A source that cannot be read; the message names it and says what was expected."""


@dataclass(frozen=True)
class PodTotals:
    """One pod's counters at one reading (totals since the agent started)."""

    uid: str
    namespace: str
    name: str
    rx_bytes: int = 0
    tx_bytes: int = 0
    opened: int = 0
    failed: int = 0
    active: int = 0


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic() seconds
    pods: Mapping[str, PodTotals]  # by uid


@dataclass(frozen=True)
class PodRow:
    totals: PodTotals
    rx_rate: float  # bytes/s
    tx_rate: float
    conn_rate: float  # connections opened per second, both directions
    fail_rate: float  # failed attempts per second


# ---- readings from /metrics ------------------------------------------------------------------

_SAMPLES = {
    "podnet_network_io_bytes_total": "io",
    "podnet_tcp_connections_opened_total": "opened",
    "podnet_tcp_connections_failed_total": "failed",
    "podnet_tcp_connections_active": "active",
}


def parse_metrics(text: str) -> dict[str, PodTotals]:
    """Per-pod totals from the Prometheus text the agent serves (node series left out)."""
    acc: dict[str, dict[str, float]] = {}
    names: dict[str, tuple[str, str]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise TopError(f"/metrics: not Prometheus text format ({exc})") from exc
    for fam in families:
        for s in fam.samples:
            kind = _SAMPLES.get(s.name)
            uid = s.labels.get("k8s_pod_uid")
            if kind is None or not uid:
                continue
            names.setdefault(uid, (s.labels.get("k8s_namespace_name", ""), s.labels.get("k8s_pod_name", "")))
            if kind == "io":
                kind = "rx_bytes" if s.labels.get("network_io_direction") == "receive" else "tx_bytes"
            d = acc.setdefault(uid, {})
            d[kind] = d.get(kind, 0.0) + s.value
    return {
        uid: PodTotals(
            uid,
            names[uid][0],
            names[uid][1],
            rx_bytes=int(d.get("rx_bytes", 0)),
            tx_bytes=int(d.get("tx_bytes", 0)),
            opened=int(d.get("opened", 0)),
            failed=int(d.get("failed", 0)),
            active=int(d.get("active", 0)),
        )
        for uid, d in acc.items()
    }


def from_snapshot(snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> dict[str, PodTotals]:
    """Per-pod totals from a snapshot of the datapath (node figures left out)."""
    out = {}
    for s in snapshot.samples:
        if s.uid is None:
            continue
        c, info = s.counters, pods.get(s.uid)
        out[s.uid] = PodTotals(
            s.uid,
            info.namespace if info else "",
            info.name if info else "",
            rx_bytes=c.bytes_rx_tcp + c.bytes_rx_udp,
            tx_bytes=c.bytes_tx_tcp + c.bytes_tx_udp,
            opened=c.opened_in + c.opened_out,
            failed=sum(c.failed.values()),
            active=c.active_in + c.active_out,
        )
    return out


# ---- rates and the table ---------------------------------------------------------------------


def rows(prev: Reading, cur: Reading) -> list[PodRow]:
    """Rates between two readings, busiest first (bytes/s in and out, then connections/s)."""
    dt = cur.at - prev.at
    out = []
    for uid, t in cur.pods.items():
        p = prev.pods.get(uid)

        def rate(now: int, before: int | None) -> float:
            # a pod new since the last reading: its whole total came within the interval
            return max(0, now - (before or 0)) / dt if dt > 0 else 0.0

        out.append(
            PodRow(
                t,
                rate(t.rx_bytes, p.rx_bytes if p else None),
                rate(t.tx_bytes, p.tx_bytes if p else None),
                rate(t.opened, p.opened if p else None),
                rate(t.failed, p.failed if p else None),
            )
        )
    out.sort(
        key=lambda r: (
            -(r.rx_rate + r.tx_rate),
            -r.conn_rate,
            -r.fail_rate,
            -r.totals.active,
            -(r.totals.rx_bytes + r.totals.tx_bytes),
            r.totals.namespace,
            r.totals.name,
            r.totals.uid,
        )
    )
    return out


HEADER = ("NAMESPACE", "POD", "RX/s", "TX/s", "CONN/s", "FAIL/s", "ACTIVE", "RX", "TX", "CONNS", "FAILED")


def human_bytes(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
        v /= 1024
    raise AssertionError("unreachable")


def render(table: Iterable[PodRow], human: bool, limit: int | None = None) -> str:
    """The table as text. ``human``: sizes in KiB/MiB; else exact figures for scripts
    (bytes/s and per-second rates with one decimal, totals as integers)."""
    lines: list[tuple[str, ...]] = [HEADER]
    for i, r in enumerate(table):
        if limit is not None and i >= limit:
            break
        t = r.totals
        size: Callable[[float], str] = human_bytes if human else (lambda v: f"{v:.1f}")
        total: Callable[[int], str] = human_bytes if human else str
        lines.append(
            (
                t.namespace or "-",
                t.name or t.uid,
                size(r.rx_rate),
                size(r.tx_rate),
                f"{r.conn_rate:.1f}",
                f"{r.fail_rate:.1f}",
                str(t.active),
                total(t.rx_bytes),
                total(t.tx_bytes),
                str(t.opened),
                str(t.failed),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for line in lines:
        cells = [
            c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])  # names left, figures right
            for i, c in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


# ---- sources ---------------------------------------------------------------------------------


class Source(Protocol):
    def read(self) -> Reading:
        """The next reading (for an agent's /metrics: the next one that has changed)."""
        ...

    def close(self) -> None: ...


class ScrapeSource:
    """A running agent's ``/metrics``."""

    def __init__(self, address: tuple[str, int], timeout: float = 60.0) -> None:
        host, port = address
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
        self.timeout = timeout
        self._last: str | None = None

    def _get(self) -> str:
        try:
            with urllib.request.urlopen(self.url, timeout=10) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TopError(
                f"--from: cannot read {self.url} ({reason}); expected an agent running with --exporter prometheus"
            ) from None

    def read(self) -> Reading:
        deadline = time.monotonic() + self.timeout
        while True:
            text = self._get()
            now = time.monotonic()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest != self._last:
                self._last = digest
                return Reading(now, parse_metrics(text))
            if now >= deadline:
                raise TopError(f"--from: {self.url} has not changed for {self.timeout:.0f} s; is the agent collecting?")
            time.sleep(POLL_SECONDS)

    def first(self) -> None:
        """Wait for a fresh collection, so the first reading starts a whole interval."""
        self._last = hashlib.sha256(self._get().encode()).hexdigest()

    def close(self) -> None:
        pass


class DatapathSource:
    """A datapath of our own (needs the agent's privileges); counts from its start."""

    def __init__(self, cgroup_root: Path, pods_file: Path | None, node_name: str, interval: float) -> None:
        from .core import Core
        from .inventory import NoPods, PodsFileSource, PodSource

        source: PodSource = PodsFileSource(pods_file, node_name) if pods_file else NoPods()
        self.core = Core(cgroup_root, source)
        self.interval = interval
        self._next: float | None = None
        self.core.start()

    def read(self) -> Reading:
        now = time.monotonic()
        if self._next is not None and now < self._next:
            time.sleep(self._next - now)
        at = time.monotonic()
        self._next = at + self.interval
        snapshot = self.core.collect()
        return Reading(at, from_snapshot(snapshot, self.core.pods))

    def close(self) -> None:
        self.core.close()


# ---- the loop --------------------------------------------------------------------------------

_ENTER, _LEAVE, _HOME_CLEAR = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l", "\x1b[H\x1b[2J"


def run(source: Source, once: bool, title: str, out: IO[str] | None = None) -> int:
    """Print one table (``once``) or redraw the table at every reading until SIGINT/SIGTERM."""
    out = out or sys.stdout
    if isinstance(source, ScrapeSource):
        source.first()
    prev = source.read()
    if once:
        cur = source.read()
        out.write(render(rows(prev, cur), human=False))
        out.flush()
        return 0

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    tty = out.isatty()
    if tty:
        out.write(_ENTER)
    try:
        while True:
            cur = source.read()
            size = shutil.get_terminal_size((120, 40))
            table = rows(prev, cur)
            prev = cur
            stamp = time.strftime("%H:%M:%S")
            head = f"otel-podnet top: {title}, {len(table)} pods, {stamp} (Ctrl-C to quit)\n\n"
            body = render(table, human=True, limit=max(1, size.lines - 4) if tty else None)
            if tty:  # like top: what does not fit the terminal's width is cut, not wrapped
                body = "".join(ln[: size.columns] + "\n" for ln in body.splitlines())
            out.write((_HOME_CLEAR if tty else "") + head + body + ("" if tty else "\n"))
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            out.write(_LEAVE)
            out.flush()
    return 0


def main(
    from_address: tuple[str, int] | None,
    once: bool,
    interval: float,
    cgroup_root: Path | None,
    pods_file: Path | None,
    node_name: str | None,
) -> int:
    from .cgroups import CgroupError, find_cgroup2_mount
    from .inventory import InventoryError
    from .libbpf import LibbpfError

    source: Source
    try:
        if from_address is not None:
            source = ScrapeSource(from_address)
            title = f"from {source.url}"
        else:
            root = cgroup_root or find_cgroup2_mount()
            source = DatapathSource(root, pods_file, node_name or os.uname().nodename, interval)
            title = "own datapath" + (f", pods from {pods_file}" if pods_file else "")
    except InventoryError as exc:
        print(f"otel-podnet: {exc}", file=sys.stderr)
        return 2
    except (CgroupError, LibbpfError, OSError) as exc:
        print(f"otel-podnet: top cannot run its own datapath: {exc} (or read an agent with --from)", file=sys.stderr)
        return 3
    try:
        return run(source, once, title)
    except KeyboardInterrupt:
        return 0
    except TopError as exc:
        print(f"otel-podnet: {exc}", file=sys.stderr)
        return 3
    finally:
        source.close()
