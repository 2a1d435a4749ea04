"""The agent minus its exporters: the datapath, attribution and the pod source, turned
into one :class:`Snapshot` per collection."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from logging import getLogger
from pathlib import Path

from .attribution import Attributor
from .capacity import Capacity
from .cgroups import CgroupIndex
from .datapath import Datapath, DatapathConfig, default_object_path
from .inventory import PodInfo, PodSource
from .log import RateLimited
from .peerinfo import PeerDirectory
from .peers import (
    NODE,
    Network,
    Peer,
    PeerFolder,
    PeerResolver,
    PeerTable,
    default_gateways,
    local_addresses,
    node_addresses,
)
from .samples import Health, PodSample, Snapshot

_logger = getLogger(__name__)

_NO_DELTAS: Mapping[Peer, tuple[int, ...]] = {}  # an owner's without growth (never written to)


def ephemeral_port_range(proc: Path = Path("/proc")) -> tuple[int, int]:
    try:
        lo, hi = (proc / "sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


class Core:
    def __init__(
        self,
        cgroup_root: Path,
        source: PodSource,
        object_path: Path | None = None,
        proc: Path = Path("/proc"),
        capacity: Capacity | None = None,
        interval: float = 10.0,
        max_peers: int = 20,
        peer_cidrs: Sequence[tuple[str, Network]] = (),
        node_ips: Iterable[str] | None = None,
    ) -> None:
        self.cgroup_root = cgroup_root
        self.source = source
        capacity = capacity or Capacity.for_pods()
        self.datapath = Datapath(
            DatapathConfig(
                cgroup_root,
                object_path or default_object_path(),
                ephemeral_port_range(proc),
                capacity,
                rtt_interval=interval,
                peers=max_peers > 0,
            )
        )
        self.index = CgroupIndex(cgroup_root)
        self.attributor = Attributor(self.datapath, self.index, capacity=capacity)
        # peers (issue 12): None with --max-peers 0
        self.peer_table: PeerTable | None = None
        self.peer_folder = PeerFolder(max_peers)
        self._peer_cidrs = tuple(peer_cidrs)
        self._node_ips = frozenset(local_addresses(proc) if node_ips is None else node_ips)
        self._gateways = default_gateways(proc) if node_ips is None else frozenset()
        if max_peers > 0:
            self.peer_table = PeerTable(self.datapath, capacity.slots)
            self.attributor.on_retire = self.peer_table.slot_retired
        self._started = False
        self._last_samples: dict[str, PodSample] = {}  # owner -> its sample (with peers) last time
        # The pods of the last snapshot, with the last known record of those that have
        # left the inventory but are still reported (their final figures): their Resource
        # keeps its name and workload to the end.
        self._view: dict[str, PodInfo] = {}
        self._last_known: dict[str, PodInfo] = {}
        self.collection_failures = 0
        self._failure_log = RateLimited(_logger, 60.0)
        self._kernel_lost = (0, 0, 0)  # the kernel's slots_exhausted, cgroups_full, no_storage
        self._limits_logged_at = -1e18

    def load(self) -> None:
        """Load the BPF object now, ahead of :meth:`start` (which loads it otherwise):
        ``otel-podnet run`` does so before its heaviest imports, as libbpf holds a parsed
        copy of the kernel's BTF (several MiB) while it loads (issue 10)."""
        self.datapath.open_and_load()

    def start(self) -> None:
        """Load, register what exists, then attach (see Attributor.start for why)."""
        self.source.refresh()
        if not self.datapath.loaded:
            self.datapath.open_and_load()
        try:
            if self.peer_table is not None:
                self.peer_table.start()
            self.attributor.start()
            self.attributor.sync(self.source.pods())
            self.datapath.attach()
        except BaseException:
            self.datapath.close()
            raise
        self._started = True

    @property
    def pods(self) -> Mapping[str, PodInfo]:
        """The pods of the last collection (see ``_view``)."""
        return self._view if self._view else self.source.pods()

    def failed(self, what: str, exc: Exception) -> None:
        """A failure after start (a map operation refused, a pod source that raised) never
        ends the agent: the kernel keeps counting and the next collection tries again. It is
        counted (``podnet.agent.collection.failures``) and logged at most once a minute."""
        self.collection_failures += 1
        self._failure_log.warning("%s failed; the agent goes on: %s: %s", what, type(exc).__name__, exc)

    def resync(self) -> None:
        """Bring the kernel's maps in line with the pod source now (between collections)."""
        try:
            self.source.refresh()
            self.attributor.sync(self.source.pods())
        except Exception as exc:
            self.failed("updating the kernel's maps", exc)

    def collect(self) -> Snapshot:
        t0 = time.perf_counter()
        self.source.refresh()
        pods = self.source.pods()
        self.attributor.sync(pods)
        samples = self.attributor.snapshot(pods)
        if self.peer_table is not None:
            samples = self._with_peers(samples, self.peer_table)
        self._last_known.update(pods)
        view = dict(pods)
        for s in samples:
            if s.uid is not None and s.uid not in view and s.uid in self._last_known:
                view[s.uid] = self._last_known[s.uid]
        for s in samples:
            if s.final and s.uid is not None:
                self._last_known.pop(s.uid, None)
        for uid in [u for u in self._last_known if u not in view]:
            del self._last_known[uid]  # gone without counters: nothing left to report
        self._view = view
        health = self.attributor.health(len(pods))
        health = replace(
            health, collection_seconds=time.perf_counter() - t0, collection_failures=self.collection_failures
        )
        if self.peer_table is not None:
            health = replace(
                health,
                peer_rows_tracked=self.peer_table.in_use,
                peer_rows_capacity=self.datapath.capacity.peer_rows,
            )
        self._log_kernel_limits(health)
        return Snapshot(tuple(samples), health)

    def peer_resolver(self) -> PeerResolver:
        """Names for remote addresses from the pod source's directory as it is now (a source
        without one names nodes and external addresses only)."""
        get = getattr(self.source, "peer_directory", None)
        directory: PeerDirectory | None = get() if get is not None else None
        node_ips = set(node_addresses(self._node_ips, self._gateways, directory))
        more = getattr(directory, "node_ips", None)
        if more is not None:
            node_ips.update(more())
        return PeerResolver(directory, node_ips, self._peer_cidrs)

    def _with_peers(self, samples: list[PodSample], table: PeerTable) -> list[PodSample]:
        """Each owner's peer series (see otel_podnet.peers), the interval's growth folded
        into at most --max-peers series and other."""
        deltas, freed = table.read(self.attributor.slot_owners, self.peer_resolver())
        if freed:
            self.datapath.bump_generation()  # sockets of freed rows find new ones
        out = []
        seen = set()
        last, kept = self._last_samples, {}
        for s in samples:
            owner = NODE if s.uid is None else s.uid
            seen.add(owner)
            peers = self.peer_folder.exported(owner, deltas.get(owner, _NO_DELTAS))
            # nothing changed (counters nor series: the very objects of then): the last sample
            sample = last.get(owner)
            if (
                sample is None
                or sample.counters is not s.counters
                or sample.final != s.final
                or sample.peers is not peers
            ):
                sample = PodSample(s.uid, s.counters, s.final, peers)
            out.append(sample)
            kept[owner] = sample
            if s.final:
                self.peer_folder.forget(owner)
        for owner in self.peer_folder.owners():
            if owner not in seen:
                self.peer_folder.forget(owner)
        self._last_samples = kept
        return out

    def _log_kernel_limits(self, h: Health) -> None:
        """The limits the kernel met, in the log as well as in podnet.agent.events.lost:
        events it attributed to the node for want of room, summed since the last line (at
        most one a minute)."""
        now = (h.slots_exhausted, h.cgroups_full, h.no_storage)
        if now == self._kernel_lost or time.monotonic() - self._limits_logged_at < 60.0:
            return
        new = [b - a for a, b in zip(self._kernel_lost, now, strict=True)]
        self._kernel_lost, self._limits_logged_at = now, time.monotonic()
        _logger.warning(
            "the kernel counted events as the node's: %d for want of a free slot (%d slots), %d with "
            "podnet_cgroups full (%d entries), %d without socket storage (memory)",
            new[0],
            h.slots_capacity,
            new[1],
            h.cgroups_capacity,
            new[2],
        )

    def close(self) -> None:
        self.datapath.close()
        self.source.close()
