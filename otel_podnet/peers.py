"""Peer metrics (issue 12): each pod's bytes and connections by the workload it talks to.

The kernel counts per (slot, remote address) in peer rows (bpf/podnet.bpf.c); here:

* :class:`PeerResolver` names a remote address: a node's own address is ``node``, a pod's
  is its workload (otel_podnet.peerinfo), a Service's ClusterIP is the workload of its
  backends when they are all one workload (else the Service alone), with the Service's name
  in ``podnet.peer.service``; any other address is ``external``, or the group of the first
  ``--peer-cidr`` that holds it (the most specific when several do).
* :class:`PeerTable` turns the rows into each owner's (pod's or the node's) deltas per peer
  and interval: a row's growth since the last reading goes to the peer its address names
  now, so a counter never moves between peers when the directory changes. It frees rows
  that stayed idle (their sockets find a new one on their next packet) and the rows of
  slots the attribution retires.
* :class:`PeerFolder` keeps at most ``max_peers`` series per owner: each interval the
  busiest by bytes keep (or get) their own series and every other peer's figures go to
  ``podnet.peer.kind=other``, whose series also takes in the whole value of a series that
  drops out. So every exported figure only grows while it exists, and at every export the
  series of an owner sum exactly to its own totals.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from typing import NamedTuple, Protocol

from .abi import PEER_FIELDS, SLOT_NODE
from .peerinfo import PeerDirectory

_logger = getLogger(__name__)

NFIELDS = len(PEER_FIELDS)
ZERO: tuple[int, ...] = (0,) * NFIELDS
IDLE_ROUNDS = 3  # a row with no growth for this many intervals is freed
I_BYTES_TX, I_BYTES_RX, I_OPENED_OUT, I_OPENED_IN = 0, 1, 2, 3
FAILED_TYPES = ("refused", "timeout", "unreachable", "reset", "other")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _PeerFields(NamedTuple):
    kind: str
    namespace: str = ""
    workload: str = ""
    workload_kind: str = ""
    service: str = ""


class Peer(_PeerFields):
    """A peer as exported: ``kind`` is pod, node, external or other; ordered by its fields.

    A (named) tuple rather than a dataclass: Peers are dict keys and set members thousands
    of times per collection, and a tuple's hash and equality run in C, where a dataclass'
    are Python calls (~0.5 us each on a slow core, issue 10)."""

    def attributes(self) -> tuple[tuple[str, str], ...]:
        return self.attrs

    @functools.cached_property
    def attrs(self) -> tuple[tuple[str, str], ...]:
        """:meth:`attributes`, made once per peer."""
        out = [("podnet.peer.kind", self.kind)]
        if self.namespace:
            out.append(("podnet.peer.namespace", self.namespace))
        if self.workload:
            out.append(("podnet.peer.workload", self.workload))
        if self.workload_kind:
            out.append(("podnet.peer.workload.kind", self.workload_kind))
        if self.service:
            out.append(("podnet.peer.service", self.service))
        return tuple(out)


OTHER = Peer("other")
NODE_PEER = Peer("node")
EXTERNAL = Peer("external")


# Figures of one peer series: len(abi.PEER_FIELDS) words, added and subtracted thousands of
# times per collection at 110 pods, so in C (map over operator.add) rather than a generator.
def _add(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(map(operator.add, a, b))


def _sub(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(map(operator.sub, a, b))


# -- naming addresses ------------------------------------------------------------------------


def parse_peer_cidr(item: str, what: str) -> tuple[str, Network]:
    """``NAME=CIDR`` of ``--peer-cidr`` (``what`` names the option in errors: ValueError)."""
    name, sep, cidr = item.partition("=")
    name, cidr = name.strip(), cidr.strip()
    if not sep or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"{what} {item!r}: expected NAME=CIDR with a name of letters, digits, '-', '_' or '.'")
    try:
        return name, ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValueError(
            f"{what} {item!r}: expected NAME=CIDR with a network such as 10.0.0.0/8 or 2001:db8::/32 (no host bits set)"
        ) from None


def local_addresses(proc: Path = Path("/proc")) -> frozenset[str]:
    """This host's own addresses (IPv4 from fib_trie's local routes, IPv6 from if_inet6),
    loopback left out: a node's addresses as its pods see them."""
    out: set[str] = set()
    try:
        last = ""
        for line in (proc / "net/fib_trie").read_text().splitlines():
            s = line.strip()
            if s.startswith(("|--", "+--")):
                last = s.split()[1]
            elif s == "/32 host LOCAL" and last and not last.startswith("127."):
                out.add(last)
    except OSError:
        pass
    try:
        for line in (proc / "net/if_inet6").read_text().splitlines():
            hexaddr = line.split()[0]
            ip = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
            if not ip.is_loopback and not ip.is_link_local:
                out.add(str(ip))
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(out)


def default_gateways(proc: Path = Path("/proc")) -> frozenset[str]:
    """The gateways of this network namespace's IPv4 default routes (``/proc/net/route``)."""
    out: set[str] = set()
    try:
        for line in (proc / "net/route").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[1] == "00000000" and int(f[3], 16) & 0x2:  # RTF_GATEWAY
                out.add(str(ipaddress.IPv4Address(int(f[2], 16).to_bytes(4, sys.byteorder))))
    except (OSError, ValueError):
        pass
    return frozenset(out)


def node_addresses(own: Iterable[str], gateways: Iterable[str], directory: PeerDirectory | None) -> frozenset[str]:
    """The node's addresses, from this network namespace's (``own``, :func:`local_addresses`)
    and its default gateways. On the host they are the node's. When one of them is a pod's
    in the directory, the agent runs in its pod's namespace (the DaemonSet on the pod
    network): its addresses are its pod's, not the node's, and the node is its gateway, the
    node's address on the pods' network, which is also the source address the node's
    masquerade (kube-proxy's, for clients outside the cluster CIDR) gives connections to pods."""
    own = frozenset(own)
    if directory is None or all(directory.pod_by_ip(a) is None for a in own):
        return own
    return frozenset(a for a in own if directory.pod_by_ip(a) is None) | frozenset(gateways)


class PeerResolver:
    def __init__(
        self,
        directory: PeerDirectory | None,
        node_ips: Iterable[str] = (),
        cidrs: Sequence[tuple[str, Network]] = (),
    ) -> None:
        self.directory = directory
        self.node_ips = frozenset(node_ips)
        # most specific first: an address in two groups belongs to the narrower one
        self._cidrs = sorted(cidrs, key=lambda c: -c[1].prefixlen)

    def resolve(self, ip: str) -> Peer:
        if ip in self.node_ips:
            return NODE_PEER
        d = self.directory
        if d is not None:
            w = d.pod_by_ip(ip)
            if w is not None:
                return Peer("pod", w.namespace, w.workload, w.kind)
            svc = d.service_by_ip(ip)
            if svc is not None:
                if len(svc.backends) == 1:
                    b = svc.backends[0]
                    return Peer("pod", b.namespace, b.workload, b.kind, service=svc.name)
                return Peer("pod", svc.namespace, service=svc.name)
        if self._cidrs:
            addr = ipaddress.ip_address(ip)
            for name, net in self._cidrs:
                if addr.version == net.version and addr in net:
                    return Peer("external", workload=name)
        return EXTERNAL


# -- the kernel's rows -------------------------------------------------------------------------


class PeerRows(Protocol):
    """What the peer table needs of the datapath (otel_podnet.datapath.Datapath)."""

    @property
    def peer_rows(self) -> int: ...
    def push_free_peer_row(self, row: int) -> None: ...
    def read_peer_rows(self) -> tuple[list[tuple[int, int, str] | None], list[tuple[int, ...]]]: ...
    def free_peer_row(self, row: int, slot: int, address: str) -> None: ...
    def recycle_peer_row(self, row: int) -> None: ...


@dataclass
class _Row:
    slot: int
    address: str
    last: tuple[int, ...] = ZERO
    idle: int = 0
    owner: str | None = None  # set once the row is freed: whose its last growth is


# Owner key of the node, as in otel_podnet.attribution.
NODE = ""
Deltas = dict[str, dict[Peer, tuple[int, ...]]]  # owner -> peer -> growth (abi.PEER_FIELDS)


class PeerTable:
    """The kernel's peer rows read into deltas per owner and peer."""

    def __init__(self, rows: PeerRows, slots: int, idle_rounds: int = IDLE_ROUNDS) -> None:
        self._dp = rows
        self._slots = slots
        self._idle_rounds = idle_rounds
        self._rows: dict[int, _Row] = {}
        self._overflow_last: dict[int, tuple[int, ...]] = {}
        self._freed: list[int] = []  # rows out of the index, recycled at the next reading
        self._pending: dict[str, dict[Peer, tuple[int, ...]]] = {}
        self._retired: list[tuple[int, str]] = []
        self._interned: dict[Peer, Peer] = {}
        self.in_use = 0

    def start(self) -> None:
        """Hand every allocatable row to the kernel (after load, before attach)."""
        for row in range(self._slots, self._dp.peer_rows):
            self._dp.push_free_peer_row(row)

    def slot_retired(self, slot: int, owner: str) -> None:
        """The attribution carried a slot into ``owner``'s totals: so do its peer rows, at
        the next reading (no socket counts into a retired slot any more)."""
        self._retired.append((slot, owner))

    def _credit(self, out: Deltas, owner: str, peer: Peer, d: Sequence[int]) -> None:
        if any(d):
            per = out.setdefault(owner, {})
            had = per.get(peer)
            per[peer] = tuple(d) if had is None else _add(had, d)

    def read(self, slot_owner: Mapping[int, str], resolver: PeerResolver) -> tuple[Deltas, bool]:
        """Each owner's growth per peer since the last reading, and whether rows were taken
        out of the index (the caller bumps the generation, so their sockets move on)."""
        owners, values = self._dp.read_peer_rows()
        out = self._pending
        self._pending = {}
        names: dict[str, Peer] = {}

        interned = self._interned
        if len(interned) > 16 * self._dp.peer_rows + 1024:  # bounded: peers come and go
            interned.clear()

        def name(ip: str) -> Peer:
            p = names.get(ip)
            if p is None:
                p = resolver.resolve(ip)
                p = names[ip] = interned.setdefault(p, p)  # one object per peer, interval after interval
            return p

        # rows freed at the last reading: their last growth, then back to the kernel
        recycled = set(self._freed)
        for row in self._freed:
            gone = self._rows.pop(row)
            if gone.owner is not None:
                self._credit(out, gone.owner, name(gone.address), _sub(values[row], gone.last))
            self._dp.recycle_peer_row(row)
        self._freed = []
        # retired slots: everything their rows hold is the retiring owner's
        retired = dict(self._retired)
        self._retired = []
        for slot, was in retired.items():
            self._credit(out, was, OTHER, _sub(values[slot], self._overflow_last.pop(slot, ZERO)))
            self._dp.recycle_peer_row(slot)
        freed_any = False
        in_use = 0
        rows, get_owner = self._rows, slot_owner.get
        for row in range(self._slots, len(owners)):
            o = owners[row]
            if o is None or not o[1] or row in recycled:
                continue
            in_use += 1
            slot, _used, address = o
            r = rows.get(row)
            if r is None or r.slot != slot or r.address != address:
                r = rows[row] = _Row(slot, address)
            if slot in retired:
                self._credit(out, retired[slot], name(address), _sub(values[row], r.last))
                self._dp.free_peer_row(row, slot, address)
                del rows[row]
                self._dp.recycle_peer_row(row)
                continue
            whose = NODE if slot == SLOT_NODE else get_owner(slot)
            if whose is None:
                continue  # a slot the attribution has not classified yet: next time
            v = values[row]
            if v == r.last:  # unchanged (most often the datapath's same tuple): compared in C
                r.idle += 1
            else:  # grew: the delta has a word not zero; credited inline (most rows, every interval)
                d = _sub(v, r.last)
                r.last, r.idle = v, 0
                peer = names.get(address) or name(address)
                per = out.get(whose)
                if per is None:
                    per = out[whose] = {}
                had = per.get(peer)
                per[peer] = d if had is None else _add(had, d)
            if r.idle >= self._idle_rounds:
                self._dp.free_peer_row(row, slot, address)
                r.owner = whose
                self._freed.append(row)
                freed_any = True
        self.in_use = in_use
        # the slots' overflow rows: traffic that found no row of its own (most hold zeros)
        overflow_last = self._overflow_last
        for slot in (SLOT_NODE, *slot_owner):
            if slot >= self._slots or slot in retired:
                continue
            v, last = values[slot], overflow_last.get(slot, ZERO)
            if v == last:
                continue
            whose = NODE if slot == SLOT_NODE else get_owner(slot)
            if whose is None:
                continue
            self._credit(out, whose, OTHER, _sub(v, last))
            overflow_last[slot] = v
        return out, freed_any


Attrs = tuple[tuple[str, str], ...]


# -- at most max_peers series per owner -----------------------------------------------------------


class PeerFolder:
    """Per owner: the peers that have a series of their own (at most ``max_peers``) and
    every series' cumulative figures (see the module's docstring)."""

    def __init__(self, max_peers: int) -> None:
        self.max_peers = max_peers
        self._series: dict[str, dict[Peer, tuple[int, ...]]] = {}
        self._exported: dict[str, tuple[tuple[Attrs, tuple[int, ...]], ...]] = {}
        # each owner's series in peer order, and their attributes
        self._order: dict[str, tuple[list[Peer], tuple[Attrs, ...]]] = {}

    def fold(self, owner: str, deltas: Mapping[Peer, Sequence[int]]) -> dict[Peer, tuple[int, ...]]:
        """Add one interval's growth per peer; the owner's series after it."""
        series, _ = self._fold(owner, deltas)
        self._order.pop(owner, None)  # its set of series may have changed behind exported's back
        return dict(series)

    def _fold(self, owner: str, deltas: Mapping[Peer, Sequence[int]]) -> tuple[dict[Peer, tuple[int, ...]], bool]:
        """The owner's series after ``deltas``, and False when their set is the same for sure."""
        series = self._series.get(owner)
        if series is None:
            series = self._series[owner] = {}
        if deltas.keys() <= series.keys():
            # Every peer that grew has a series already (most intervals of most owners):
            # no peer is new, so none can displace another, and nothing moves to other.
            for p, d in deltas.items():
                series[p] = _add(series[p], d)
            return series, False
        members = {p for p in series if p != OTHER}

        def busy(p: Peer) -> tuple[int, int, int, int, Peer]:
            d, had = deltas.get(p, ZERO), series.get(p, ZERO)
            # by bytes, then connections; on a tie a peer that has a series keeps it, the
            # biggest first (the fewest figures move to other)
            return (
                -(d[I_BYTES_TX] + d[I_BYTES_RX]),
                -sum(d[I_OPENED_OUT:]),
                0 if p in members else 1,
                -(had[I_BYTES_TX] + had[I_BYTES_RX]),
                p,
            )

        candidates = (members | {p for p in deltas if p != OTHER and any(deltas[p])}) - {OTHER}
        if len(candidates) <= self.max_peers:  # all keep a series: nothing to rank
            keep = candidates
        else:
            keep = set(sorted(candidates, key=busy)[: self.max_peers])
        other = series.get(OTHER, ZERO)
        if OTHER in deltas:
            other = _add(other, deltas[OTHER])
        for p in members - keep:  # drops out: its whole value goes on in other
            other = _add(other, series.pop(p))
        for p, d in deltas.items():
            if p == OTHER:
                continue
            if p in keep:
                had = series.get(p)
                series[p] = tuple(d) if had is None else _add(had, d)
            else:
                other = _add(other, d)
        if any(other):
            series[OTHER] = other
        return series, True

    def exported(self, owner: str, deltas: Mapping[Peer, Sequence[int]]) -> tuple[tuple[Attrs, tuple[int, ...]], ...]:
        """:meth:`fold`, as a sample carries it: (attributes, figures) per series in peer
        order. An owner without growth keeps its series: the last tuple is handed back.
        The order is sorted again only when the owner's set of series changed."""
        if not deltas:
            kept = self._exported.get(owner)
            if kept is not None:
                return kept
        series = self._series.get(owner)
        cached = self._order.get(owner)
        if series is not None and cached is not None and deltas.keys() <= series.keys():
            # _fold's steady path, inline (every owner, every interval): the same series
            for p, d in deltas.items():
                series[p] = _add(series[p], d)
        else:
            series, changed = self._fold(owner, deltas)
            if cached is None or (
                changed and (len(cached[0]) != len(series) or not all(p in series for p in cached[0]))
            ):
                order = sorted(series)
                cached = self._order[owner] = (order, tuple([p.attrs for p in order]))
        order, attrs = cached
        out = tuple(zip(attrs, map(series.__getitem__, order), strict=True))
        self._exported[owner] = out
        return out

    def forget(self, owner: str) -> None:
        self._series.pop(owner, None)
        self._exported.pop(owner, None)
        self._order.pop(owner, None)

    def owners(self) -> list[str]:
        return list(self._series)
