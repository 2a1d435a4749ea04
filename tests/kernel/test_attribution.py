"""Attribution: cgroup drivers, hostNetwork pods, node processes, the IP fallback."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_podnet import abi, libbpf
from otel_podnet.abi import CG_HOST, CG_POD, SLOT_NODE
from otel_podnet.samples import Counters, PodSample
from otel_podnet.simnode import SimNode, SimPod

from .conftest import Agent, cgroup_id


def exchange(node: SimNode, client: SimPod | None, server: SimPod, port: int, n: int = 3) -> None:
    addr = server.ip4
    srv = node.workload(server, "tcp-server", addr=addr, port=port, count=n, recv=10_000, send=1_000)
    node.wait_ready(srv)
    node.result(node.workload(client, "tcp-client", addr=addr, port=port, count=n, send=10_000, recv=1_000))
    node.result(srv)


def conn(c: Counters) -> tuple[int, int, int, int]:
    return c.opened_out, c.opened_in, c.payload_tx, c.payload_rx


@pytest.mark.parametrize(
    ("driver", "qos", "runtime"),
    [
        ("systemd", "burstable", "cri-containerd"),
        ("systemd", "guaranteed", "crio"),
        ("systemd", "besteffort", "docker"),
        ("cgroupfs", "burstable", ""),
        ("cgroupfs", "guaranteed", ""),
    ],
)
def test_cgroup_drivers(node: SimNode, start_agent: Callable[[], Agent], driver: str, qos: str, runtime: str) -> None:
    a = node.add_pod("a", driver=driver, qos=qos, runtime=runtime or "cri-containerd")
    b = node.add_pod("b")
    agent = start_agent()
    exchange(node, a, b, 5100)
    ca = agent.settle(a, lambda c: c.closed_out == 3)
    assert conn(ca) == (3, 0, 30_000, 3_000)


def test_pod_started_after_the_agent(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    """A cgroup the kernel sees first takes a slot at once; nothing is lost before the
    agent has classified it."""
    b = node.add_pod("b")
    agent = start_agent()
    a = node.add_pod("late")  # new cgroup, new namespace: not in the inventory yet either
    exchange(node, a, b, 5101)
    agent.publish()
    ca = agent.settle(a, lambda c: c.closed_out == 3)
    assert conn(ca) == (3, 0, 30_000, 3_000)


def test_host_network_pod_and_node_process(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    hn = node.add_pod("hostnet", host_network=True)
    b = node.add_pod("b")
    agent = start_agent()
    # the node process's cgroup (one of this test's own) is the node's: a host cgroup on
    # the node slot
    node_cg = cgroup_id(node.node_cgroup)
    assert agent.cgroup_map()[node_cg] == (SLOT_NODE, CG_HOST)
    # The node slot also holds every other process of this machine (downloads, other test
    # runs): the node process's own sockets are read through a slot of their own.
    witness = agent.witness(node.node_cgroup)
    exchange(node, hn, b, 5102, n=4)  # the hostNetwork pod, from the node's IP
    exchange(node, None, b, 5103, n=2)  # a node process, from the same IP
    chn = agent.settle(hn, lambda c: c.closed_out == 4)
    cb = agent.settle(b, lambda c: c.closed_in == 6)
    cn = agent.core.datapath.read_slot(witness)
    assert conn(chn) == (4, 0, 40_000, 4_000)  # its own four, not the node's two
    assert conn(cb) == (0, 6, 6_000, 60_000)
    assert conn(cn) == (2, 0, 20_000, 2_000)  # the node process's two, not the pod's four
    assert (cn.closed_out, cn.opened_in) == (2, 0)
    # on the wire, b received exactly what the pod and the node process sent
    assert chn.bytes_tx_tcp + cn.bytes_tx_tcp == cb.bytes_rx_tcp
    assert chn.packets_tx_tcp + cn.packets_tx_tcp == cb.packets_rx_tcp
    assert agent.cgroup_map()[node_cg] == (witness, CG_HOST)  # the agent left it as a host cgroup


def test_ip_fallback_for_a_pod_outside_pod_cgroups(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    outside = node.add_pod("outside", in_pod_cgroup=False)
    b = node.add_pod("b")
    agent = start_agent()
    exchange(node, outside, b, 5104, n=5)
    exchange(node, b, outside, 5105, n=2)  # and inbound, accepted by the outside pod
    co = agent.settle(outside, lambda c: c.closed_out == 5 and c.closed_in == 2)
    assert conn(co) == (5, 2, 50_000 + 2_000, 5_000 + 20_000)
    cb = agent.counters(b)
    assert conn(cb) == (2, 5, 5_000 + 20_000, 50_000 + 2_000)
    assert co.bytes_tx_tcp == cb.bytes_rx_tcp and co.bytes_rx_tcp == cb.bytes_tx_tcp


def test_removed_pod_final_then_gone_and_slots_recycled(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    agent = start_agent()
    exchange(node, a, b, 5106)
    agent.settle(a, lambda c: c.closed_out == 3)
    slots_before = agent.owned_slots(a.uid)
    assert len(slots_before) == 2  # its cgroups share one slot; its IP has the other
    node.remove_pod(a)
    agent.publish()
    finals = []
    for _ in range(4):
        snap = agent.core.collect()
        finals += [s for s in snap.samples if s.uid == a.uid]
    # reported while its slots drain, exactly once as final, then never again
    assert [s.final for s in finals].count(True) == 1
    assert finals[-1].final and conn(finals[-1].counters) == (3, 0, 30_000, 3_000)
    # both given back (slots_in_use would also count other pods of this machine)
    assert agent.owned_slots(a.uid) == set()


def test_closed_where_opened_after_the_ip_fallback_is_learnt(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    """Connections opened while their socket still counted for the node (the pod's IP not
    known yet) are closed there too: the pod gets their later traffic, never a close
    without an open (which would leave the node's active +1 for ever)."""
    b = node.add_pod("b")
    agent = start_agent()
    outside = node.add_pod("outside", in_pod_cgroup=False)  # not in the pods file yet
    srv = node.workload(b, "echo-server", addr=b.ip4, port=5107, count=7)
    node.wait_ready(srv)
    holder = node.workload(outside, "hold", stdin=True, addr=b.ip4, port=5107, count=7, size=1000)
    node.wait_ready(holder)
    assert agent.settle(b, lambda c: c.opened_in == 7).opened_in == 7
    agent.publish()  # now the pod and its IP are known: its sockets resolve to its slot
    agent.counters(outside)

    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("send\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "sent"
    holder.stdin.write("close\n")
    holder.stdin.flush()
    assert node.result(holder) == {"held": 7, "sent": 7000}
    node.result(srv)
    cb = agent.settle(b, lambda c: c.closed_in == 7)
    assert (cb.opened_in, cb.closed_in, cb.active_in) == (7, 7, 0)
    co = agent.counters(outside)
    # the traffic after the remap is the pod's; the connections were never its
    assert (co.payload_tx, co.payload_rx) == (7000, 7000)
    assert (co.opened_out, co.adopted_out, co.closed_out) == (0, 0, 0)


def _v1_hierarchy() -> Path | None:
    """A mounted cgroup v1 hierarchy (a hybrid host's), or None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] == "cgroup":
            return Path(pre.split(" ")[4])
    return None


def test_the_kernel_queues_removed_cgroups_of_the_default_hierarchy_only(
    node: SimNode, start_agent: Callable[[], Agent]
) -> None:
    """podnet_cgroup_rmdir: a cgroup v2 directory removed on the node is in the next
    gone_cgroups(); the first call after attach is never complete (removals between the
    agent's walk and attach were not seen). A v1 hierarchy's removal is not queued: its
    cgroup ids are its own and could be a v2 cgroup's."""
    agent = start_agent()
    dp = agent.core.datapath
    dp.gone_cgroups()  # the agent's first collection would have made this call
    v2 = node.outside_cgroup.parent / "podnet-rmdir-test"
    v2.mkdir()
    v2_id = cgroup_id(v2)
    v2.rmdir()
    v1_root = _v1_hierarchy()
    v1_id = None
    if v1_root is not None:
        v1 = v1_root / f"podnet-rmdir-test-{node.tag}"
        v1.mkdir()
        try:
            v1_id = os.stat(v1).st_ino
        finally:
            v1.rmdir()
    gone = dp.gone_cgroups()
    assert gone is not None and v2_id in gone  # other cgroups of this machine may be in it too
    if v1_id is None:
        pytest.skip("no cgroup v1 hierarchy mounted here: the v2-only half was checked")
    assert v1_id not in gone


def test_cgroup_entries_in_batches_and_key_by_key(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    """podnet_cgroups read whole (Map.dump): in one batch, in several, and key by key as on
    a kernel without batch lookups, the pods' cgroups have the entries the agent gave them
    (other cgroups of this machine come and go meanwhile: only the pods' are compared)."""
    pods = [node.add_pod(f"p{i}", driver="systemd" if i % 2 else "cgroupfs") for i in range(3)]
    agent = start_agent()
    uids = {p.uid for p in pods}  # the entries the agent wrote, from its own records
    mine = {
        cgid: (slot, CG_POD)
        for cgid, (info, slot) in agent.core.attributor._pod_cgroups.items()
        if info.pod_uid in uids
    }
    assert len(mine) == 6 and SLOT_NODE not in {slot for slot, _ in mine.values()}
    m = agent.core.datapath.cgroups

    def entries(keys: bytes, values: bytes) -> dict[int, tuple[int, int]]:
        ks, vs = m.key_size, m.value_size
        out = {}
        for i in range(len(keys) // ks):
            v = values[i * vs : (i + 1) * vs]
            out[int.from_bytes(keys[i * ks : (i + 1) * ks], sys.byteorder)] = (
                int.from_bytes(v[:4], sys.byteorder),
                int.from_bytes(v[4:], sys.byteorder),
            )
        return out

    for keys, values in (m.dump(), m.dump(batch=2), m._dump_slow()):
        got = entries(keys, values)
        assert len(keys) // m.key_size == len(values) // m.value_size == len(got) > len(mine)
        assert {cgid: got[cgid] for cgid in mine} == mine


def test_array_read_from_an_element_on_by_batches_and_one_by_one(
    node: SimNode, start_agent: Callable[[], Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Map.read_array from element ``first`` on: the same bytes as that part of the whole
    array, with batch lookups and, as on a kernel without them, one lookup per element."""
    a, b = node.add_pod("a"), node.add_pod("b")
    agent = start_agent()
    exchange(node, a, b, 5102, n=1)  # takes peer rows: their owners are not all zeros
    dp = agent.core.datapath
    m, size, rows, first = dp.peer_owner, ctypes.sizeof(abi.PodnetPeerOwner), dp.peer_rows, dp.capacity.slots
    whole = (abi.PodnetPeerOwner * rows)()
    m.read_array(whole, rows, size)
    assert any(bytes(whole)[first * size :])
    real = libbpf.lib()

    class NoBatch:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        @staticmethod
        def bpf_map_lookup_batch(*_: object) -> int:
            ctypes.set_errno(errno.EINVAL)
            return -1

    for lib in (real, NoBatch()):
        monkeypatch.setattr(libbpf, "lib", lambda lib=lib: lib)
        part = (abi.PodnetPeerOwner * (rows - first))()
        m.read_array(part, rows - first, size, first=first)
        assert bytes(part) == bytes(whole)[first * size :]


def test_an_idle_pod_keeps_its_sample_object(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    """A pod whose counters and peer series did not change since the last collection gets
    the very sample object of then (its slots' bytes unchanged); one that changed, a new one."""
    a, b = node.add_pod("a"), node.add_pod("b")
    agent = start_agent()
    exchange(node, a, b, 5103, n=1)
    last: dict[str | None, PodSample] = {}
    kept = False
    for _ in range(50):  # until the kernel has finished with the closes
        now = {s.uid: s for s in agent.core.collect().samples}
        kept = a.uid in last and now[a.uid] is last[a.uid]
        if kept:
            break
        last = now
        time.sleep(0.1)
    assert kept and now[a.uid].counters.closed_out == 1 and now[a.uid].peers
    exchange(node, a, b, 5104, n=1)
    after = agent.settle(a, lambda c: c.closed_out == 2)
    assert after.opened_out == 2 and after is not now[a.uid].counters
