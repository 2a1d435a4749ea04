"""Which pod each kernel slot counts for, and monotonic per-pod totals.

The kernel counts per *slot*. A cgroup seen for the first time takes a free slot in the
kernel itself (so nothing is lost before we classify it); here we classify it: a pod's
cgroup keeps its slot, any other cgroup is remapped to the node slot and its slot retired.
Pods with IPs also get one slot for the kernel's IP fallback. A slot is retired one round
after it was unmapped (so sockets have re-resolved), its last figures are carried into its
owner's running total, and it goes back to the free queue zeroed. Totals are therefore
``carried + live slots``: they never go backwards when a map entry is recreated. A
connection's close is counted in the slot that counted it opened (the kernel keeps that slot
in the socket's storage), so a slot still holding open connections is retired only once
they have closed: reused earlier, their closes would land on another owner.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from logging import getLogger
from typing import Protocol

from . import abi
from .cgroups import CgroupIndex, CgroupInfo
from .inventory import PodInfo
from .samples import Counters, Health, PodSample

_logger = getLogger(__name__)

NODE = ""  # the owner key of the node


class SlotMaps(Protocol):
    """What attribution needs of the datapath (otel_podnet.datapath.Datapath)."""

    def push_free_slot(self, slot: int) -> None: ...
    def pop_free_slot(self) -> int | None: ...
    def read_slot(self, slot: int) -> Counters: ...
    def zero_slot(self, slot: int) -> None: ...
    def cgroup_entries(self) -> Iterator[tuple[int, int, int]]: ...
    def set_cgroup(self, cgid: int, slot: int, kind: int, only_new: bool = False) -> bool: ...
    def delete_cgroup(self, cgid: int) -> None: ...
    def set_pod_ip(self, address: str, slot: int) -> None: ...
    def delete_pod_ip(self, address: str) -> None: ...
    def bump_generation(self) -> None: ...
    def health(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class _Retiring:
    slot: int
    owner: str
    due_round: int


class Attributor:
    def __init__(self, maps: SlotMaps, index: CgroupIndex, max_slots: int = abi.MAX_SLOTS, gc_rounds: int = 64) -> None:
        self._maps = maps
        self._gc_rounds = gc_rounds
        self._index = index
        self._max_slots = max_slots
        self._slot_owner: dict[int, str] = {}
        self._carried: dict[str, Counters] = {}
        self._retiring: list[_Retiring] = []
        self._pod_cgroups: dict[int, tuple[CgroupInfo, int]] = {}
        self._ip_slot: dict[str, int] = {}  # pod uid -> its IP-fallback slot
        self._ips: dict[str, str] = {}  # address -> pod uid, as in the kernel map
        self._round = 0
        self._cgroups_tracked = 0

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Fill the free-slot queue and register every cgroup that exists now. Called after
        load and before attach, so the kernel never sees a cgroup we have not classified."""
        for slot in range(1, self._max_slots):
            self._maps.push_free_slot(slot)
        pods = hosts = 0
        for info in self._index.walk_all():
            if info.pod_uid:
                slot = self._take_slot(info.pod_uid)
                if self._maps.set_cgroup(info.cgid, slot, abi.CG_POD, only_new=True):
                    self._pod_cgroups[info.cgid] = (info, slot)
                    pods += 1
                else:
                    self._give_back(slot)
            elif self._maps.set_cgroup(info.cgid, abi.SLOT_NODE, abi.CG_HOST, only_new=True):
                hosts += 1
        _logger.info("registered %d pod cgroups and %d other cgroups under %s", pods, hosts, self._index.root)

    def _take_slot(self, owner: str) -> int:
        slot = self._maps.pop_free_slot()
        if slot is None:
            _logger.warning("no free counting slot for %s: counted as the node's", owner or "node")
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

    # -- every interval ---------------------------------------------------------------------

    def sync(self, pods: Mapping[str, PodInfo]) -> None:
        """Classify new cgroups, drop dead ones, mirror pod IPs, retire freed slots."""
        self._round += 1
        self._index.begin_round()
        remapped = self._sync_cgroups()
        remapped |= self._sync_ips(pods)
        if self._round % self._gc_rounds == 0:
            self._forget_dead_host_cgroups()
        if remapped:
            self._maps.bump_generation()
        self._finish_retirements()

    def _sync_cgroups(self) -> bool:
        remapped = False
        tracked = 0
        for cgid, slot, kind in list(self._maps.cgroup_entries()):
            tracked += 1
            if kind != abi.CG_UNKNOWN:
                continue
            info = self._index.lookup(cgid)
            if info is not None and info.pod_uid:
                if slot == abi.SLOT_NODE:  # the kernel found no free slot; try again
                    slot = self._take_slot(info.pod_uid)
                    remapped |= slot != abi.SLOT_NODE
                if slot != abi.SLOT_NODE:
                    self._slot_owner.setdefault(slot, info.pod_uid)
                self._maps.set_cgroup(cgid, slot, abi.CG_POD)
                self._pod_cgroups[cgid] = (info, slot)
            else:
                self._maps.set_cgroup(cgid, abi.SLOT_NODE, abi.CG_HOST)
                self._retire(slot, NODE)
                remapped = True
        for cgid, (info, slot) in list(self._pod_cgroups.items()):
            if not self._index.exists(info):
                self._maps.delete_cgroup(cgid)
                self._index.forget(cgid)
                del self._pod_cgroups[cgid]
                self._retire(slot, info.pod_uid or NODE)
                remapped = True
        self._cgroups_tracked = tracked
        return remapped

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

    def _sync_ips(self, pods: Mapping[str, PodInfo]) -> bool:
        desired: dict[str, str] = {}
        for p in sorted(pods.values(), key=lambda p: (p.ip_claim_rank, p.uid)):
            for ip in p.ips_for_fallback:
                desired[ip] = p.uid  # the best claim comes last and wins
        changed = False
        for ip, uid in list(self._ips.items()):
            if desired.get(ip) != uid:
                self._maps.delete_pod_ip(ip)
                del self._ips[ip]
                changed = True
        wanted = set(desired.values())
        for uid, slot in list(self._ip_slot.items()):
            if uid not in wanted:
                del self._ip_slot[uid]
                self._retire(slot, uid)
        for ip, uid in desired.items():
            if ip in self._ips:
                continue
            slot_or_none = self._ip_slot.get(uid)
            if slot_or_none is None:
                slot = self._ip_slot[uid] = self._take_slot(uid)
            else:
                slot = slot_or_none
            self._maps.set_pod_ip(ip, slot)
            self._ips[ip] = uid
            changed = True
        return changed

    def _finish_retirements(self) -> None:
        keep: list[_Retiring] = []
        for r in self._retiring:
            if r.due_round > self._round:
                keep.append(r)
                continue
            last = self._maps.read_slot(r.slot)
            if last.active_out or last.active_in:
                keep.append(r)  # its open connections will still close here
                continue
            self._carried[r.owner] = self._carried.get(r.owner, Counters()) + last
            self._maps.zero_slot(r.slot)
            self._give_back(r.slot)
        self._retiring = keep

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self, pods: Mapping[str, PodInfo]) -> list[PodSample]:
        """Per-owner totals now: the node first, then every pod that has counters or is in
        the inventory. A pod with no slot left and no longer in the inventory is reported
        once more with ``final=True`` and then forgotten."""
        totals: dict[str, Counters] = dict(self._carried)
        totals[NODE] = totals.get(NODE, Counters()) + self._maps.read_slot(abi.SLOT_NODE)
        for slot, owner in self._slot_owner.items():
            totals[owner] = totals.get(owner, Counters()) + self._maps.read_slot(slot)
        for uid in pods:
            totals.setdefault(uid, Counters())
        live_owners = set(self._slot_owner.values())
        samples = [PodSample(None, totals.pop(NODE))]
        for uid, counters in totals.items():
            final = uid not in live_owners and uid not in pods
            samples.append(PodSample(uid, counters, final=final))
            if final:
                self._carried.pop(uid, None)
        return samples

    def health(self, pods: int) -> Health:
        h = self._maps.health()
        return Health(
            pods=pods,
            slots_in_use=len(self._slot_owner) + 1,
            slots_capacity=self._max_slots,
            cgroups_tracked=self._cgroups_tracked,
            cgroups_capacity=abi.MAX_CGROUPS,
            slots_exhausted=h[abi.H_SLOTS_EXHAUSTED],
            cgroups_full=h[abi.H_CGROUPS_FULL],
            no_storage=h[abi.H_NO_STORAGE],
        )
