"""Full tables on the real kernel: maps sized small at load, every limit counted, every pod
recovers when room frees, and a failure at run time never ends the agent.

Each test runs its simulated node under a cgroup directory of its own and attaches the
agent there, so the cgroup_skb programs see only its pods' packets. (The tracepoints see
every socket of the machine: other work's cgroups reach this agent's map too, as the
node's; the tests assert only on their own pods.)
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_podnet.agent import Agent as RunLoop
from otel_podnet.capacity import Capacity
from otel_podnet.cgroups import CgroupIndex
from otel_podnet.core import Core
from otel_podnet.inventory import PodsFileSource
from otel_podnet.samples import Counters, Snapshot
from otel_podnet.series import health_series
from otel_podnet.simnode import SimNode

from .conftest import Agent
from .test_attribution import conn, exchange


@pytest.fixture
def own_root(cgroup_root: Path) -> Iterator[Path]:
    root = cgroup_root / f"podnet-cap-{secrets.token_hex(3)}"
    root.mkdir()
    try:
        yield root
    finally:
        root.rmdir()


@pytest.fixture
def small_node(own_root: Path) -> Iterator[SimNode]:
    n = SimNode(own_root)
    try:
        yield n
    finally:
        n.cleanup()


def start(node: SimNode, root: Path, tmp_path: Path, capacity: Capacity) -> Agent:
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    core = Core(root, PodsFileSource(pods_file, node.name), capacity=capacity)
    core.start()
    return Agent(node, core, pods_file)


def test_slots_exhausted_then_each_pod_gets_its_own(small_node: SimNode, own_root: Path, tmp_path: Path) -> None:
    """7 slots: the node's and two for each of three pods (their cgroups' and their IP
    fallback's). Two more pods find none: their traffic is the node's and each missing slot
    is counted once; when two pods leave, both get slots and count exactly from then on."""
    node = small_node
    a, b, c = node.add_pod("a"), node.add_pod("b"), node.add_pod("c")
    agent = start(node, own_root, tmp_path, Capacity(slots=7, cgroups=4096, pod_ips=64))
    try:
        h = agent.core.attributor.health(3)
        assert (h.slots_in_use, h.slots_capacity, h.pods_exhausted_cgroup, h.pods_exhausted_ip) == (7, 7, 0, 0)
        d = node.add_pod("d")  # its own pod cgroup
        e = node.add_pod("e", in_pod_cgroup=False)  # known by its IP only
        agent.publish()
        exchange(node, d, a, 5200, n=3)
        exchange(node, e, a, 5201, n=3)
        ca = agent.settle(a, lambda c: c.closed_in == 6)
        assert conn(ca) == (0, 6, 6_000, 60_000)
        snap = agent.core.collect()
        by_uid = {s.uid: s.counters for s in snap.samples}
        assert by_uid[d.uid] == by_uid[e.uid] == Counters()  # counted as the node's
        h = snap.health
        assert (h.pods_exhausted_cgroup, h.pods_exhausted_ip) == (1, 2)  # d's cgroups; d's and e's IPs
        assert h.slots_in_use == 7

        node.remove_pod(b)
        node.remove_pod(c)
        agent.publish()
        for _ in range(3):  # unmapped, retired a round later, then handed to d and e
            snap = agent.core.collect()
        h = snap.health
        # d: one slot for its cgroups and one for its IP; e: one for its IP
        assert (h.slots_in_use, h.pods_exhausted_cgroup, h.pods_exhausted_ip) == (1 + 2 + 3, 1, 2)
        by_uid = {s.uid: s.counters for s in snap.samples}
        assert by_uid[d.uid] == by_uid[e.uid] == Counters()  # what the node counted stays there

        exchange(node, d, a, 5202, n=2)
        exchange(node, e, a, 5203, n=2)
        cd = agent.settle(d, lambda c: c.closed_out == 2)
        ce = agent.settle(e, lambda c: c.closed_out == 2)
        assert conn(cd) == conn(ce) == (2, 0, 20_000, 2_000)
        assert conn(agent.counters(a)) == (0, 10, 10_000, 100_000)
        # one batched read of the table gives what one lookup per slot gives
        dp = agent.core.datapath
        slots = [s for s, owner in agent.core.attributor._slot_owner.items() if owner in (a.uid, d.uid, e.uid)]
        assert len(slots) == 2 + 2 + 1  # a's and d's cgroups and IPs, e's IP; quiet now
        assert dp.read_slots(slots) == {s: dp.read_slot(s) for s in slots}
    finally:
        agent.core.close()


def test_pod_ip_map_full_counted_once_and_retried(small_node: SimNode, own_root: Path, tmp_path: Path) -> None:
    """Three pod IPs fit; the fourth pod's is refused (counted once, however many rounds) and
    its traffic is the node's; once a pod leaves, its IP goes in and it counts exactly."""
    node = small_node
    uids = sorted(str(uuid.uuid4()) for _ in range(4))  # the IPs go in by UID: the last is refused
    server = node.add_pod("server", uid=uids[0])  # counted by its cgroup, IP or none
    pods = [node.add_pod(f"p{i}", in_pod_cgroup=False, uid=uids[i + 1]) for i in range(3)]  # by IP only
    refused = pods[-1]
    agent = start(node, own_root, tmp_path, Capacity(slots=64, cgroups=4096, pod_ips=3))
    try:
        for _ in range(3):
            h = agent.core.collect().health
        assert (h.pod_ips_tracked, h.pod_ips_capacity, h.pod_ips_refused) == (3, 3, 1)
        exchange(node, refused, server, 5210, n=3)
        agent.settle(server, lambda c: c.closed_in == 3)
        assert agent.counters(refused) == Counters()  # the node's

        node.remove_pod(next(p for p in pods if p is not refused))
        agent.publish()
        for _ in range(3):
            h = agent.core.collect().health
        assert (h.pod_ips_tracked, h.pod_ips_refused) == (3, 1)  # reported once, not once a round
        exchange(node, refused, server, 5211, n=2)
        cr = agent.settle(refused, lambda c: c.closed_out == 2)
        assert conn(cr) == (2, 0, 20_000, 2_000)
        assert conn(agent.counters(server)) == (0, 5, 5_000, 50_000)
    finally:
        agent.core.close()


def test_cgroup_map_full_counted_and_logged(
    small_node: SimNode, own_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One cgroup too many at start: the agent counts the one it could not register; a pod
    that comes later finds no room in the kernel either, and its traffic is the node's."""
    node = small_node
    a = node.add_pod("a")
    node.add_pod("b")
    existing = len(CgroupIndex(own_root).walk_all())
    caplog.set_level(logging.WARNING, "otel_podnet")
    agent = start(node, own_root, tmp_path, Capacity(slots=64, cgroups=existing - 1, pod_ips=64))
    try:
        h = agent.core.collect().health
        assert (h.cgroups_refused, h.cgroups_capacity) == (1, existing - 1)
        full = [r.getMessage() for r in caplog.records if "podnet_cgroups is full" in r.getMessage()]
        assert len(full) == 1 and full[0].startswith(f"podnet_cgroups is full ({existing - 1} entries)")
        late = node.add_pod("late", in_pod_cgroup=True)
        agent.publish()
        exchange(node, late, a, 5230, n=2)
        snap = agent.core.collect()
        assert {s.uid: s.counters for s in snap.samples}[late.uid] == Counters()
        assert snap.health.cgroups_refused == 1  # the kernel's own misses are its counter's
        kernel = [r.getMessage() for r in caplog.records if "the kernel counted events" in r.getMessage()]
        assert len(kernel) == 1 and f"with podnet_cgroups full ({existing - 1} entries)" in kernel[0]
        # once per socket resolved (its two client sockets); the tracepoints see every socket
        # of the machine, so other work's new cgroups may add to it
        assert snap.health.cgroups_full >= 2
    finally:
        agent.core.close()


class Recorder:
    """An exporter that keeps what it is handed."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def export(self, snapshot: Snapshot, pods: object) -> None:
        self.snapshots.append(snapshot)

    def shutdown(self) -> None:
        pass


def test_failure_at_run_time_counted_and_the_agent_goes_on(
    node: SimNode, tmp_path: Path, cgroup_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A map operation that fails inside a collection (here: the cgroup map's descriptor
    taken away for one round) is logged and counted; the next collection is whole."""
    a, b = node.add_pod("a"), node.add_pod("b")
    agent = start(node, cgroup_root, tmp_path, Capacity.for_pods(110))
    rec = Recorder()
    loop = RunLoop(agent.core, [rec], interval=1.0)
    try:
        loop.collect_and_export()
        cgroups = agent.core.datapath.cgroups
        fd, cgroups.fd = cgroups.fd, 1_000_000  # EBADF on the next map call
        loop.collect_and_export()
        cgroups.fd = fd
        exchange(node, a, b, 5220, n=2)
        agent.settle(a, lambda c: c.closed_out == 2)
        loop.collect_and_export()
        assert len(rec.snapshots) == 2
        last = rec.snapshots[-1]
        assert last.health.collection_failures == 1
        series = {(d.name, attrs): v for d, attrs, v in health_series(last.health, 0)}
        assert series[("podnet.agent.collection.failures", ())] == 1
        by_uid = {s.uid: s.counters for s in last.samples}
        assert conn(by_uid[a.uid]) == (2, 0, 20_000, 2_000)
        warned = [r.getMessage() for r in caplog.records if "failed; the agent goes on" in r.getMessage()]
        assert len(warned) == 1 and warned[0].startswith("a collection failed; the agent goes on: LibbpfError")
    finally:
        agent.core.close()
