"""Attribution logic over in-memory maps: monotonic totals across slot retirement, final
samples once, IP map mirroring. (The same logic against the kernel: tests/kernel.)"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from otel_podnet import abi
from otel_podnet.attribution import Attributor
from otel_podnet.cgroups import CgroupIndex
from otel_podnet.inventory import PodInfo
from otel_podnet.samples import Counters


class MemMaps:
    """The datapath's maps as dictionaries; the test plays the kernel's part."""

    def __init__(self) -> None:
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

    def set_pod_ip(self, address: str, slot: int) -> None:
        self.ips[address] = slot

    def delete_pod_ip(self, address: str) -> None:
        del self.ips[address]

    def bump_generation(self) -> None:
        self.gen += 1

    def health(self) -> tuple[int, ...]:
        return (0,) * abi.NHEALTH

    # the kernel's side
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
