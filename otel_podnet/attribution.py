"""Which pod each kernel slot counts for, and monotonic per-pod totals.

The kernel counts per *slot*. A cgroup seen for the first time takes a free slot in the
kernel itself (so nothing is lost before we classify it); here we classify it: all the
cgroups of a pod share one slot (the first one it got; a later cgroup's own slot is
retired into the pod's total), any other cgroup is remapped to the node slot and its slot
retired. Pods with IPs also get one slot for the kernel's IP fallback. A slot is retired
one round after it was unmapped (so sockets have re-resolved), its last figures are
carried into its owner's running total, and it goes back to the free queue zeroed. Totals
are therefore ``carried + live slots``: they never go backwards when a map entry is
recreated.

Full tables: a pod that finds no free slot is counted as the node's (and reported in
``podnet.agent.slots.exhausted``) until a slot frees: the next slot retired goes to it
directly, and from then on its traffic is its own (what was counted meanwhile stays with
the node). A pod IP refused by a full map is reported and tried again every round.
A connection's close is counted in the slot that counted it opened (the kernel keeps that
slot in the socket's storage), so a slot still holding open connections is retired only
once they have closed: reused earlier, their closes would land on another owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from logging import getLogger
from typing import Protocol

from . import abi
from .capacity import Capacity
from .cgroups import CgroupIndex, CgroupInfo
from .inventory import PodInfo
from .libbpf import MapFull
from .log import RateLimited
from .samples import ZERO, Counters, Health, PodSample

_logger = getLogger(__name__)

NODE = ""  # the owner key of the node


class SlotMaps(Protocol):
    """What attribution needs of the datapath (otel_podnet.datapath.Datapath)."""

    def push_free_slot(self, slot: int) -> None: ...
    def pop_free_slot(self) -> int | None: ...
    def read_slot(self, slot: int) -> Counters: ...
    def read_slots(self, slots: Iterable[int]) -> dict[int, Counters]: ...
    def zero_slot(self, slot: int) -> None: ...
    def cgroup_entries(self) -> Iterator[tuple[int, int, int]]: ...
    def set_cgroup(self, cgid: int, slot: int, kind: int, only_new: bool = False) -> bool:
        """False when ``only_new`` and the entry exists; MapFull when the map is full."""
        ...

    def delete_cgroup(self, cgid: int) -> None: ...
    def gone_cgroups(self) -> set[int] | None:
        """Ids of the cgroups removed since the last call; None: unknown, check them all."""
        ...

    def set_pod_ip(self, address: str, slot: int) -> None:
        """MapFull when the map is full."""
        ...

    def delete_pod_ip(self, address: str) -> None: ...
    def bump_generation(self) -> None: ...
    def health(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class _Retiring:
    slot: int
    owner: str
    due_round: int


class Attributor:
    def __init__(
        self,
        maps: SlotMaps,
        index: CgroupIndex,
        max_slots: int | None = None,
        gc_rounds: int = 64,
        capacity: Capacity | None = None,
    ) -> None:
        self._maps = maps
        self._gc_rounds = gc_rounds
        self._index = index
        self._capacity = capacity or Capacity.for_pods()
        self._max_slots = max_slots or self._capacity.slots
        self._slot_owner: dict[int, str] = {}
        self._carried: dict[str, Counters] = {}
        self._last_samples: dict[str, PodSample] = {}  # owner -> its sample at the last snapshot
        self._retiring: list[_Retiring] = []
        self._pod_cgroups: dict[int, tuple[CgroupInfo, int]] = {}
        self._pod_slot: dict[str, int] = {}  # pod uid -> the slot its cgroups share (NODE: none free)
        self._ip_slot: dict[str, int] = {}  # pod uid -> its IP-fallback slot (NODE: none free)
        self._ips: dict[str, str] = {}  # address -> pod uid, as in the kernel map
        self._ips_refused: set[str] = set()  # addresses a full map refused (reported once each)
        self._ips_synced: Mapping[str, PodInfo] | None = None  # the pods _sync_ips last mirrored
        self._round = 0
        self._pods_seen: Mapping[str, PodInfo] = {}  # the inventory at the last rescan
        self._cgroups_tracked = 0
        self._remapped = False
        self.exhausted = {"cgroup": 0, "ip": 0}  # pods that found no free slot, by slot kind
        self.full = {"cgroups": 0, "pod_ips": 0}  # entries the agent could not insert
        # peers (issue 12): told of every slot carried into its owner's totals
        self.on_retire: Callable[[int, str], None] | None = None
        self._log = RateLimited(_logger, 60.0)

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Fill the free-slot queue and register every cgroup that exists now. Called after
        load and before attach, so the kernel never sees a cgroup we have not classified."""
        for slot in range(1, self._max_slots):
            self._maps.push_free_slot(slot)
        pods = hosts = 0
        for info in self._index.walk_all():
            try:
                if info.pod_uid:
                    had = info.pod_uid in self._pod_slot
                    slot = self._slot_of_pod(info.pod_uid)
                    if self._maps.set_cgroup(info.cgid, slot, abi.CG_POD, only_new=True):
                        self._pod_cgroups[info.cgid] = (info, slot)
                        pods += 1
                    elif not had:  # the kernel saw it first: sync classifies it
                        self._give_back(self._pod_slot.pop(info.pod_uid))
                elif self._maps.set_cgroup(info.cgid, abi.SLOT_NODE, abi.CG_HOST, only_new=True):
                    hosts += 1
            except MapFull:
                self._cgroups_full(info)
        for uid in [u for u, s in self._pod_slot.items() if not self._has_cgroups(u)]:
            self._give_back(self._pod_slot.pop(uid))  # its cgroups did not fit
        _logger.info("registered %d pod cgroups and %d other cgroups under %s", pods, hosts, self._index.root)

    def _cgroups_full(self, info: CgroupInfo) -> None:
        self.full["cgroups"] += 1
        self._log.warning(
            "podnet_cgroups is full (%d entries): the sockets of %s are counted as the node's",
            self._capacity.cgroups,
            info.pod_uid or f"cgroup {info.cgid}",
        )

    def _has_cgroups(self, uid: str) -> bool:
        return any(info.pod_uid == uid for info, _ in self._pod_cgroups.values())

    def _slot_of_pod(self, uid: str) -> int:
        """The slot a pod's cgroups share; a new pod takes one (NODE if none is free)."""
        slot = self._pod_slot.get(uid)
        if slot is None:
            slot = self._pod_slot[uid] = self._take_slot(uid, "cgroup")
        return slot

    def _take_slot(self, owner: str, kind: str) -> int:
        slot = self._maps.pop_free_slot()
        if slot is None:
            self.exhausted[kind] += 1
            self._log.warning(
                "no free counting slot (%d in all) for pod %s (%s): counted as the node's until one frees",
                self._max_slots,
                owner,
                kind,
            )
            return abi.SLOT_NODE
        self._slot_owner[slot] = owner
        return slot

    def _give_back(self, slot: int) -> None:
        if slot != abi.SLOT_NODE:
            self._slot_owner.pop(slot, None)
            self._maps.push_free_slot(slot)

    def _retire(self, slot: int, owner: str) -> None:
        if slot != abi.SLOT_NODE:
            self._slot_owner[slot] = owner
            self._retiring.append(_Retiring(slot, owner, self._round + 1))

    # -- giving a waiting pod its slot --------------------------------------------------------

    def _waiting(self) -> Iterator[tuple[str, str]]:
        """(kind, uid) of the pods counted as the node's for want of a slot, oldest first."""
        for uid, slot in list(self._pod_slot.items()):
            if slot == abi.SLOT_NODE:
                yield "cgroup", uid
        for uid, slot in list(self._ip_slot.items()):
            if slot == abi.SLOT_NODE:
                yield "ip", uid

    def _assign(self, kind: str, uid: str, slot: int) -> None:
        """Move a waiting pod's cgroups (or IPs) from the node's slot to ``slot``."""
        self._slot_owner[slot] = uid
        if kind == "cgroup":
            self._pod_slot[uid] = slot
            for cgid, (info, _) in list(self._pod_cgroups.items()):
                if info.pod_uid == uid:
                    self._maps.set_cgroup(cgid, slot, abi.CG_POD)
                    self._pod_cgroups[cgid] = (info, slot)
        else:
            self._ip_slot[uid] = slot
            for ip, owner in self._ips.items():
                if owner == uid:
                    self._maps.set_pod_ip(ip, slot)
        self._remapped = True
        _logger.info("pod %s has a counting slot again (%s)", uid, kind)

    def _recover(self) -> None:
        """Waiting pods take slots that are free now."""
        for kind, uid in self._waiting():
            slot = self._maps.pop_free_slot()
            if slot is None:
                return
            self._assign(kind, uid, slot)

    # -- every interval ---------------------------------------------------------------------

    def sync(self, pods: Mapping[str, PodInfo]) -> None:
        """Classify new cgroups, drop dead ones, mirror pod IPs, retire freed slots."""
        self._round += 1
        self._remapped = False
        self._index.begin_round()
        if pods != self._pods_seen:
            # New or changed pods (the kubelet reports a container started only once its
            # cgroup exists): learn their cgroups now, while they exist. A container that
            # connects and ends between two rounds (a client in a hostNetwork pod) has no
            # cgroup left to find when its kernel entry is classified: its counts would be
            # the node's, with no pod IP to fall back on.
            self._index.rescan_pods()
            self._pods_seen = dict(pods)
        self._sync_cgroups()
        self._sync_ips(pods)
        if self._round % self._gc_rounds == 0:
            self._forget_dead_host_cgroups()
        self._finish_retirements()
        self._recover()
        if self._remapped:
            self._maps.bump_generation()

    def _sync_cgroups(self) -> None:
        tracked = 0
        classified: list[int] = []
        for cgid, slot, kind in list(self._maps.cgroup_entries()):
            tracked += 1
            if kind != abi.CG_UNKNOWN:
                continue
            info = self._index.lookup(cgid)
            if info is not None and info.pod_uid:
                self._classify_pod_cgroup(cgid, slot, info)
                classified.append(cgid)
            else:
                self._maps.set_cgroup(cgid, abi.SLOT_NODE, abi.CG_HOST)
                self._retire(slot, NODE)
                self._remapped = True
        # Which pod cgroups are gone: the kernel's list of removals (podnet_cgroup_rmdir in
        # bpf/podnet.bpf.c), read after the inserts above so that a cgroup removed while it
        # was classified is in it; and the cgroups classified now are checked themselves (a
        # socket can outlive its cgroup, whose removal was then read rounds ago). Without a
        # complete list, every pod cgroup is checked.
        gone = self._maps.gone_cgroups()
        pod_cgroups = self._pod_cgroups
        if gone is None:
            dead = [cgid for cgid, (info, _) in pod_cgroups.items() if not self._index.exists(info)]
        else:
            dead = [cgid for cgid in gone if cgid in pod_cgroups]
            dead += [c for c in classified if c not in gone and not self._index.exists(pod_cgroups[c][0])]
        for cgid in dead:
            info, slot = pod_cgroups.pop(cgid)
            self._maps.delete_cgroup(cgid)
            self._index.forget(cgid)
            uid = info.pod_uid or NODE
            if not self._has_cgroups(uid):  # the pod's last cgroup: its slot goes
                self._retire(self._pod_slot.pop(uid, slot), uid)
            self._remapped = True
        self._cgroups_tracked = tracked

    def _classify_pod_cgroup(self, cgid: int, slot: int, info: CgroupInfo) -> None:
        """A cgroup of a pod the kernel saw first, with the slot it took (NODE: none free)."""
        uid = info.pod_uid
        assert uid is not None
        target = self._pod_slot.get(uid)
        if target is None:  # the pod's first cgroup: its slot becomes the pod's
            if slot != abi.SLOT_NODE:
                self._slot_owner[slot] = uid
                target = self._pod_slot[uid] = slot
            else:
                target = self._slot_of_pod(uid)
        elif target == abi.SLOT_NODE and slot != abi.SLOT_NODE:  # a waiting pod: take it
            self._pod_cgroups[cgid] = (info, abi.SLOT_NODE)
            self._assign("cgroup", uid, slot)
            return
        elif slot != target:  # the pod has one already: what this one counted is the pod's
            self._retire(slot, uid)
        self._maps.set_cgroup(cgid, target, abi.CG_POD)
        self._pod_cgroups[cgid] = (info, target)
        self._remapped |= target != slot

    def _forget_dead_host_cgroups(self) -> None:
        """Drop the entries of non-pod cgroups that no longer exist. Their removal cannot be
        seen cheaply (they are outside the pod subtrees), so every ``gc_rounds`` rounds one
        walk of the hierarchy finds them; without it, a node's churning system cgroups
        (sessions, cron jobs) would fill podnet_cgroups over months."""
        alive = {info.cgid for info in self._index.walk_all()}
        dropped = 0
        for cgid, _slot, kind in list(self._maps.cgroup_entries()):
            if kind == abi.CG_HOST and cgid not in alive:
                self._maps.delete_cgroup(cgid)
                dropped += 1
        self._index.keep_only(alive)
        if dropped:
            _logger.debug("forgot %d cgroups that are gone", dropped)

    def _sync_ips(self, pods: Mapping[str, PodInfo]) -> None:
        if pods == self._ips_synced and not self._ips_refused:
            return  # the pods of the last round, each of their addresses in the map: as it was
        desired: dict[str, str] = {}
        for p in sorted(pods.values(), key=lambda p: (p.ip_claim_rank, p.uid)):
            for ip in p.ips_for_fallback:
                desired[ip] = p.uid  # the best claim comes last and wins
        for ip, uid in list(self._ips.items()):
            if desired.get(ip) != uid:
                self._maps.delete_pod_ip(ip)
                del self._ips[ip]
                self._remapped = True
        self._ips_refused &= desired.keys()
        wanted = set(desired.values())
        for uid, slot in list(self._ip_slot.items()):
            if uid not in wanted:
                del self._ip_slot[uid]
                self._retire(slot, uid)
        for ip, uid in desired.items():
            if ip in self._ips:
                continue
            known = self._ip_slot.get(uid)
            slot = self._take_slot(uid, "ip") if known is None else known
            self._ip_slot[uid] = slot
            try:
                self._maps.set_pod_ip(ip, slot)
            except MapFull:
                if ip not in self._ips_refused:  # reported once; tried again every round
                    self._ips_refused.add(ip)
                    self.full["pod_ips"] += 1
                    self._log.warning(
                        "podnet_pod_ips is full (%d entries): %s of pod %s not added", self._capacity.pod_ips, ip, uid
                    )
                continue
            self._ips_refused.discard(ip)
            self._ips[ip] = uid
            self._remapped = True
        self._ips_synced = dict(pods)

    def _finish_retirements(self) -> None:
        keep: list[_Retiring] = []
        waiting = self._waiting()
        for r in self._retiring:
            if r.due_round > self._round:
                keep.append(r)
                continue
            last = self._maps.read_slot(r.slot)
            if last.active_out or last.active_in:
                keep.append(r)  # its open connections will still close here
                continue
            self._carried[r.owner] = self._carried.get(r.owner, ZERO) + last
            self._maps.zero_slot(r.slot)
            if self.on_retire is not None:
                self.on_retire(r.slot, r.owner)
            self._slot_owner.pop(r.slot, None)
            # Straight to a pod waiting for one: through the queue, the kernel could hand
            # it to any new cgroup first.
            nxt = next(waiting, None)
            if nxt is not None:
                self._assign(nxt[0], nxt[1], r.slot)
            else:
                self._give_back(r.slot)
        self._retiring = keep

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self, pods: Mapping[str, PodInfo]) -> list[PodSample]:
        """Per-owner totals now: the node first, then every pod that has counters or is in
        the inventory. A pod with no slot left and no longer in the inventory is reported
        once more with ``final=True`` and then forgotten."""
        totals: dict[str, Counters] = dict(self._carried)
        live = self._maps.read_slots([abi.SLOT_NODE, *self._slot_owner])
        for slot, owner in ((abi.SLOT_NODE, NODE), *self._slot_owner.items()):
            before = totals.get(owner)  # most owners have one slot and nothing carried
            totals[owner] = live[slot] if before is None else before + live[slot]
        for uid in pods:
            totals.setdefault(uid, ZERO)  # one shared zero: Counters() costs ~6 us (issue 10)
        live_owners = set(self._slot_owner.values()) | set(self._pod_slot) | set(self._ip_slot)
        # An owner whose counters are the very object of the last snapshot (its slots' bytes
        # did not change: see Datapath.read_slots) gets the very sample of then, too.
        last, kept = self._last_samples, {}
        node = last.get(NODE)
        if node is None or node.counters is not totals[NODE]:
            node = PodSample(None, totals[NODE])
        kept[NODE] = node
        del totals[NODE]
        samples = [node]
        for uid, counters in totals.items():
            final = uid not in live_owners and uid not in pods
            sample = last.get(uid)
            if sample is None or sample.counters is not counters or sample.final != final:
                sample = PodSample(uid, counters, final=final)
            samples.append(sample)
            kept[uid] = sample
            if final:
                self._carried.pop(uid, None)
        self._last_samples = kept
        return samples

    @property
    def slot_owners(self) -> Mapping[int, str]:
        """Slot -> owner (a pod UID, or NODE) of every slot in use but the node's own."""
        return self._slot_owner

    def health(self, pods: int) -> Health:
        h = self._maps.health()
        return Health(
            pods=pods,
            slots_in_use=len(self._slot_owner) + 1,
            slots_capacity=self._max_slots,
            cgroups_tracked=self._cgroups_tracked,
            cgroups_capacity=self._capacity.cgroups,
            slots_exhausted=h[abi.H_SLOTS_EXHAUSTED],
            cgroups_full=h[abi.H_CGROUPS_FULL],
            no_storage=h[abi.H_NO_STORAGE],
            pod_ips_tracked=len(self._ips),
            pod_ips_capacity=self._capacity.pod_ips,
            pods_exhausted_cgroup=self.exhausted["cgroup"],
            pods_exhausted_ip=self.exhausted["ip"],
            cgroups_refused=self.full["cgroups"],
            pod_ips_refused=self.full["pod_ips"],
            peers_full=h[abi.H_PEERS_FULL] if len(h) > abi.H_PEERS_FULL else 0,
        )
