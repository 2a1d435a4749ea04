"""Attribution logic over in-memory maps: monotonic totals across slot retirement, final
samples once, IP map mirroring. (The same logic against the kernel: tests/kernel.)"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from otel_podnet import abi
from otel_podnet.attribution import Attributor
from otel_podnet.cgroups import CgroupIndex, CgroupInfo
from otel_podnet.inventory import PodInfo
from otel_podnet.libbpf import MapFull
from otel_podnet.samples import Counters


class MemMaps:
    """The datapath's maps as dictionaries; the test plays the kernel's part. With
    ``removals``, the kernel's queue of removed cgroups too (podnet_cgroup_rmdir): the test
    removes directories with :meth:`rmdir`; without, the attributor is told nothing of
    removals and checks every pod cgroup itself."""

    def __init__(self, removals: bool = False) -> None:
        self.removals = removals
        self.gone: list[int] = []
        self.gone_read = False
        self.free: list[int] = []
        self.stats: dict[int, Counters] = {}
        self.cgroups: dict[int, tuple[int, int]] = {}
        self.ips: dict[str, int] = {}
        self.gen = 0

    def push_free_slot(self, slot: int) -> None:
        self.free.append(slot)

    def pop_free_slot(self) -> int | None:
        return self.free.pop(0) if self.free else None

    def read_slot(self, slot: int) -> Counters:
        return self.stats.get(slot, Counters())

    def read_slots(self, slots: Iterable[int]) -> dict[int, Counters]:
        return {slot: self.read_slot(slot) for slot in slots}

    def zero_slot(self, slot: int) -> None:
        self.stats.pop(slot, None)

    def cgroup_entries(self) -> Iterator[tuple[int, int, int]]:
        for cgid, (slot, kind) in self.cgroups.items():
            yield cgid, slot, kind

    def set_cgroup(self, cgid: int, slot: int, kind: int, only_new: bool = False) -> bool:
        if only_new and cgid in self.cgroups:
            return False
        self.cgroups[cgid] = (slot, kind)
        return True

    def delete_cgroup(self, cgid: int) -> None:
        del self.cgroups[cgid]

    def gone_cgroups(self) -> set[int] | None:
        if not self.removals:
            return None
        out, first = set(self.gone), not self.gone_read
        self.gone.clear()
        self.gone_read = True
        return None if first else out  # as the datapath: the first list is never complete

    def set_pod_ip(self, address: str, slot: int) -> None:
        self.ips[address] = slot

    def delete_pod_ip(self, address: str) -> None:
        del self.ips[address]

    def bump_generation(self) -> None:
        self.gen += 1

    def health(self) -> tuple[int, ...]:
        return (0,) * abi.NHEALTH

    # the kernel's side
    def rmdir(self, path: Path) -> None:
        cgid = path.stat().st_ino
        path.rmdir()
        if self.removals:
            self.gone.append(cgid)

    def kernel_sees(self, cgid: int) -> int:
        slot = self.free.pop(0)
        self.cgroups[cgid] = (slot, abi.CG_UNKNOWN)
        return slot

    def count(self, slot: int, **kw: int) -> None:
        self.stats[slot] = self.read_slot(slot) + Counters(**kw)


UID = "0f9d4b1e-8a2c-4c3e-9f00-1234567890ab"


def test_new_pod_cgroup_then_removal_is_monotonic_and_final_once(tmp_path: Path) -> None:
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    pod_dir = tmp_path / "kubepods" / f"pod{UID}" / "c1"
    pod_dir.mkdir(parents=True)
    cgid = pod_dir.stat().st_ino
    slot = maps.kernel_sees(cgid)
    maps.count(slot, opened_out=3, payload_tx=300)
    att.sync({})
    assert maps.cgroups[cgid] == (slot, abi.CG_POD)
    [_node, pod] = att.snapshot({})
    assert pod.uid == UID and pod.counters.opened_out == 3 and not pod.final

    pod_dir.rmdir()
    att.sync({})  # cgroup gone: unmapped, slot retiring
    assert cgid not in maps.cgroups and maps.gen == 1
    maps.count(slot, closed_out=3)  # a straggler before the sockets re-resolve
    assert [s.counters.closed_out for s in att.snapshot({}) if s.uid == UID] == [3]
    att.sync({})  # retired: carried, zeroed, freed
    assert slot in maps.free and slot not in maps.stats
    last = [s for s in att.snapshot({}) if s.uid == UID]
    assert len(last) == 1 and last[0].final and last[0].counters.closed_out == 3 and last[0].counters.opened_out == 3
    assert [s for s in att.snapshot({}) if s.uid == UID] == []


def test_non_pod_cgroup_goes_to_the_node_and_keeps_its_counts(tmp_path: Path) -> None:
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    (tmp_path / "system.slice").mkdir()
    cgid = (tmp_path / "system.slice").stat().st_ino
    slot = maps.kernel_sees(cgid)
    maps.count(slot, payload_rx=50)
    att.sync({})
    assert maps.cgroups[cgid] == (abi.SLOT_NODE, abi.CG_HOST)
    maps.count(abi.SLOT_NODE, payload_rx=7)
    att.sync({})
    node = att.snapshot({})[0]
    assert node.uid is None and node.counters.payload_rx == 57


def test_pod_ips_mirrored_and_reused_ip_moves(tmp_path: Path) -> None:
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    x = PodInfo(uid="x", name="x", namespace="d", ips=("10.0.0.9",))
    att.sync({"x": x})
    sx = maps.ips["10.0.0.9"]
    y = PodInfo(uid="y", name="y", namespace="d", ips=("10.0.0.9",))
    hn = PodInfo(uid="h", name="h", namespace="d", ips=("192.0.2.1",), host_network=True)
    att.sync({"y": y, "h": hn})
    assert maps.ips["10.0.0.9"] != sx and "192.0.2.1" not in maps.ips
    assert maps.gen == 2


class FullMaps(MemMaps):
    """podnet_pod_ips holding at most ``room`` addresses."""

    room = 1

    def set_pod_ip(self, address: str, slot: int) -> None:
        if address not in self.ips and len(self.ips) >= self.room:
            raise MapFull(errno.E2BIG, "full")
        super().set_pod_ip(address, slot)


def test_pod_ips_follow_the_pods_and_a_refused_one_is_tried_every_round(tmp_path: Path) -> None:
    maps = FullMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    x = PodInfo(uid="x", name="x", namespace="d", ips=("10.0.0.9",))
    att.sync({"x": x})
    att.sync({"x": x})  # the same pods: nothing to do
    assert list(maps.ips) == ["10.0.0.9"] and maps.gen == 1
    moved = replace(x, ips=("10.0.0.8",))  # the same pod, a new address
    att.sync({"x": moved})
    assert list(maps.ips) == ["10.0.0.8"] and maps.gen == 2
    pods = {"x": moved, "z": PodInfo(uid="z", name="z", namespace="d", ips=("10.0.0.5",))}
    att.sync(pods)
    att.sync(pods)
    assert "10.0.0.5" not in maps.ips and att.full["pod_ips"] == 1  # refused, reported once
    maps.room = 2
    att.sync(pods)  # the same pods, but one address still missing: tried again
    assert maps.ips == {"10.0.0.8": att._ip_slot["x"], "10.0.0.5": att._ip_slot["z"]}


def test_entries_of_dead_host_cgroups_are_forgotten_by_the_periodic_walk(tmp_path: Path) -> None:
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8, gc_rounds=3)
    session = tmp_path / "user.slice" / "session-1.scope"
    session.mkdir(parents=True)
    att.start()
    cgid = session.stat().st_ino
    assert maps.cgroups[cgid] == (abi.SLOT_NODE, abi.CG_HOST)
    session.rmdir()
    att.sync({})
    att.sync({})
    assert cgid in maps.cgroups  # not yet: the walk runs every third round
    att.sync({})
    assert cgid not in maps.cgroups
    assert (tmp_path / "user.slice").stat().st_ino in maps.cgroups  # the living stay


def test_an_ip_claimed_twice_goes_to_the_live_pod(tmp_path: Path) -> None:
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    old = PodInfo(uid="z-old", name="old", namespace="d", ips=("10.0.0.7",), terminating=True)
    new = PodInfo(uid="a-new", name="new", namespace="d", ips=("10.0.0.7",), phase="Pending")
    for order in ({"z-old": old, "a-new": new}, {"a-new": new, "z-old": old}):
        att.sync(order)
        assert maps.ips["10.0.0.7"] == att._ip_slot["a-new"]


def test_a_pods_cgroups_share_one_slot(tmp_path: Path) -> None:
    """Each cgroup the kernel sees takes a slot; a pod's second cgroup is moved onto the
    pod's slot and its own retired, what it counted meanwhile carried into the pod's total."""
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    pod = tmp_path / "kubepods" / f"pod{UID}"
    (pod / "c1").mkdir(parents=True)
    (pod / "c2").mkdir()
    c1, c2 = (pod / "c1").stat().st_ino, (pod / "c2").stat().st_ino
    s1, s2 = maps.kernel_sees(c1), maps.kernel_sees(c2)
    maps.count(s1, opened_out=1)
    maps.count(s2, opened_out=2, closed_out=2)  # closed: nothing keeps s2 from retiring
    att.sync({})
    assert maps.cgroups[c1] == maps.cgroups[c2] == (s1, abi.CG_POD)
    maps.count(s1, opened_out=4)
    att.sync({})  # s2 retired: carried and freed
    assert s2 in maps.free and s2 not in maps.stats
    assert [s.counters.opened_out for s in att.snapshot({}) if s.uid == UID] == [7]
    assert att.health(1).slots_in_use == 2  # the node's and the pod's


def test_a_slot_is_retired_only_once_its_connections_have_closed(tmp_path: Path) -> None:
    """The kernel counts a close in the slot that counted the connection opened; a slot
    freed while it still holds open connections would receive them under a new owner."""
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    (tmp_path / "session.scope").mkdir()
    cgid = (tmp_path / "session.scope").stat().st_ino
    slot = maps.kernel_sees(cgid)
    maps.count(slot, opened_out=2, adopted_in=1, closed_out=1)
    att.sync({})  # not a pod: remapped to the node, its slot retiring
    att.sync({})
    att.sync({})
    assert slot not in maps.free and maps.read_slot(slot).opened_out == 2
    assert (att.snapshot({})[0].counters.active_out, att.snapshot({})[0].counters.active_in) == (1, 1)
    maps.count(slot, closed_out=1, closed_in=1)  # the last two close where they opened
    att.sync({})
    assert slot in maps.free and slot not in maps.stats
    node = att.snapshot({})[0].counters
    assert (node.opened_out, node.adopted_in, node.closed_out, node.closed_in) == (2, 1, 2, 1)
    assert (node.active_out, node.active_in) == (0, 0)


def test_a_container_that_ends_before_its_cgroup_is_classified_counts_for_its_pod(tmp_path: Path) -> None:
    """The real node's hostNetwork client: its container's cgroup exists when the kubelet
    reports the pod Running, the client connects and the container ends before the next
    round, so the kernel's entry for the cgroup is classified once the directory is gone.
    With no pod IP to fall back on (the pod's IP is the node's), only the cgroup names it."""
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    pod_dir = tmp_path / "kubelet-podnet" / "kubepods" / "besteffort" / f"pod{UID}"
    ctr = pod_dir / ("c" * 64)
    ctr.mkdir(parents=True)
    pods = {UID: PodInfo(UID, "hostnet", "shop", phase="Running", ips=("10.233.0.1",), host_network=True)}
    att.sync(pods)  # the watch's event: the pod Running, its container started
    assert maps.ips == {}  # the node's IP is no fallback
    slot = maps.kernel_sees(ctr.stat().st_ino)  # three connections, then the container ends
    maps.count(slot, opened_out=3, closed_out=3, payload_tx=2100, payload_rx=3900)
    ctr.rmdir()
    pod_dir.rmdir()
    att.sync(pods)
    att.sync(pods)  # retired into the pod's total
    node, pod = att.snapshot(pods)
    assert node.counters == Counters()
    assert pod.uid == UID
    assert (pod.counters.opened_out, pod.counters.closed_out, pod.counters.payload_tx, pod.counters.payload_rx) == (
        3,
        3,
        2100,
        3900,
    )


class CountingIndex(CgroupIndex):
    """A CgroupIndex that counts the existence checks (one stat each)."""

    checks = 0

    def exists(self, info: CgroupInfo) -> bool:
        self.checks += 1
        return super().exists(info)


def _pod_entries(maps: MemMaps) -> set[int]:
    return {cgid for cgid, (_, kind) in maps.cgroups.items() if kind == abi.CG_POD}


def _pod_with_two_containers(tmp_path: Path, maps: MemMaps, att: Attributor) -> tuple[Path, Path, int]:
    pod_dir = tmp_path / "kubepods" / f"pod{UID}"
    c1, c2 = pod_dir / "c1", pod_dir / "c2"
    c1.mkdir(parents=True)
    c2.mkdir()
    slot = maps.kernel_sees(c1.stat().st_ino)
    maps.count(slot, opened_out=2, closed_out=2, payload_tx=700)
    att.sync({})
    maps.kernel_sees(c2.stat().st_ino)  # a second container: its slot merges into the pod's
    att.sync({})
    assert maps.cgroups[c2.stat().st_ino] == (slot, abi.CG_POD)
    return c1, c2, slot


def test_removals_come_from_the_kernels_list_with_no_check_per_cgroup(tmp_path: Path) -> None:
    """podnet_cgroup_rmdir (issue 10): once the kernel's list is complete, a round checks no
    pod cgroup's directory; a container's removal retires nothing while its pod has another
    cgroup, and the pod's last one retires its slot into the pod's total."""
    maps = MemMaps(removals=True)
    index = CountingIndex(tmp_path)
    att = Attributor(maps, index, max_slots=8)
    att.start()
    c1, c2, slot = _pod_with_two_containers(tmp_path, maps, att)
    checks = index.checks  # the first round checked every pod cgroup: its list was not complete
    for _ in range(3):
        att.sync({})
    assert index.checks == checks  # nothing removed, nothing checked
    maps.rmdir(c1)
    att.sync({})
    assert _pod_entries(maps) == {c2.stat().st_ino} and index.checks == checks
    maps.rmdir(c2)
    maps.rmdir(c2.parent)
    att.sync({})
    att.sync({})  # retired: carried into the pod's total, the slot freed
    assert _pod_entries(maps) == set() and slot in maps.free and index.checks == checks
    [pod] = [s for s in att.snapshot({}) if s.uid == UID]
    assert pod.final and (pod.counters.opened_out, pod.counters.payload_tx) == (2, 700)


def test_without_the_kernels_list_every_pod_cgroup_is_checked(tmp_path: Path) -> None:
    """The first round after start, and any round after the kernel's queue was full
    (gone_cgroups() is None): a removal is found by checking the directories."""
    maps = MemMaps(removals=False)
    index = CountingIndex(tmp_path)
    att = Attributor(maps, index, max_slots=8)
    att.start()
    c1, c2, _slot = _pod_with_two_containers(tmp_path, maps, att)
    before = index.checks
    maps.rmdir(c1)  # not queued
    att.sync({})
    assert _pod_entries(maps) == {c2.stat().st_ino}
    assert index.checks - before == 2  # both of the pod's cgroups


def test_a_cgroup_whose_removal_was_read_before_it_was_classified_is_found_gone(tmp_path: Path) -> None:
    """A socket outlives its container's cgroup: the removal is read in one round, the
    socket's next packet makes a kernel entry for the cgroup in a later one. The index still
    names the cgroup, so the entry is classified as the pod's, and then found gone."""
    maps = MemMaps(removals=True)
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    att.sync({})  # the kernel's list is complete from now on
    pod_dir = tmp_path / "kubepods" / f"pod{UID}"
    ctr = pod_dir / "c1"
    ctr.mkdir(parents=True)
    att.sync({UID: PodInfo(UID, "web", "shop", phase="Running")})  # a new pod: its cgroups learnt
    cgid = ctr.stat().st_ino
    maps.rmdir(ctr)
    att.sync({UID: PodInfo(UID, "web", "shop", phase="Running")})  # the removal read; no entry yet
    slot = maps.kernel_sees(cgid)  # the orphaned socket's FIN
    maps.count(slot, closed_out=1, payload_tx=52)
    att.sync({UID: PodInfo(UID, "web", "shop", phase="Running")})
    assert cgid not in maps.cgroups
    att.sync({UID: PodInfo(UID, "web", "shop", phase="Running")})  # retired into the pod's total
    [pod] = [s for s in att.snapshot({}) if s.uid == UID]
    assert (pod.counters.closed_out, pod.counters.payload_tx) == (1, 52)


def test_an_owner_whose_counters_did_not_change_keeps_its_sample_object(tmp_path: Path) -> None:
    maps = MemMaps()
    att = Attributor(maps, CgroupIndex(tmp_path), max_slots=8)
    att.start()
    pod_dir = tmp_path / "kubepods" / f"pod{UID}" / "c1"
    pod_dir.mkdir(parents=True)
    slot = maps.kernel_sees(pod_dir.stat().st_ino)
    maps.count(slot, opened_out=3)
    maps.count(abi.SLOT_NODE, payload_rx=5)
    att.sync({})
    first = att.snapshot({})
    again = att.snapshot({})  # MemMaps hands back the same Counters: nothing changed
    assert [s.uid for s in again] == [None, UID] and all(x is y for x, y in zip(first, again, strict=True))
    maps.count(slot, opened_out=1)  # changed after its sample was kept: seen
    changed = att.snapshot({})
    assert changed[0] is first[0] and changed[1] is not first[1] and changed[1].counters.opened_out == 4
