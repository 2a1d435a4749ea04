"""Kernel-side sums (issue 10): podnet_sum adds every CPU's copy of a row in the kernel,
and what the agent reads from it is exactly what summing the per-CPU rows gives, and what
the user-space fallback (a kernel without the helpers it needs) gives.

The pods' client and server are pinned to different CPUs, so their slots and peer rows
hold counts on two CPUs: a sum over one CPU would not pass."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_podnet import abi, check, datapath, features, libbpf
from otel_podnet.capacity import Capacity
from otel_podnet.core import Core
from otel_podnet.datapath import PROGRAM_SUM, PROGRAMS_CGROUP, PROGRAMS_TRACING, Datapath, default_object_path
from otel_podnet.inventory import PodsFileSource
from otel_podnet.libbpf import LibbpfError
from otel_podnet.rows import RowCache
from otel_podnet.samples import Counters
from otel_podnet.simnode import SimNode, SimPod

from .conftest import Agent

COUNT, SEND, RECV = 6, 300_000, 200_000


def exchange(node: SimNode, client: SimPod, server: SimPod, port: int) -> None:
    """COUNT connections, the client on the first CPU and the server on the last."""
    last = os.cpu_count() or 1

    def run(cpu: int, *argv: str) -> list[str]:
        return ["taskset", "-c", str(cpu), sys.executable, "-m", "otel_podnet.simnode.workload", *argv]

    srv = node.spawn(server, run(last - 1, "tcp-server", "--addr", server.ip4, "--port", str(port),
                                 "--count", str(COUNT), "--recv", str(SEND), "--send", str(RECV)))  # fmt: skip
    node.wait_ready(srv)
    cli = node.spawn(client, run(0, "tcp-client", "--addr", server.ip4, "--port", str(port),
                                 "--count", str(COUNT), "--send", str(SEND), "--recv", str(RECV)))  # fmt: skip
    node.result(cli)
    node.result(srv)


def per_cpu_slot(dp: Datapath, slot: int) -> list[tuple[int, ...]]:
    rows = (abi.PodnetCounters * dp._ncpus)()
    assert dp.stats.lookup(ctypes.c_uint32(slot), rows)
    return [tuple(r) for r in rows]


def per_cpu_peer(dp: Datapath, row: int) -> list[tuple[int, ...]]:
    rows = (abi.PodnetPeerCounters * dp._ncpus)()
    assert dp.peer_stats.lookup(ctypes.c_uint32(row), rows)
    return [tuple(r) for r in rows]


def column_sum(rows: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(map(sum, zip(*rows, strict=True)))


def quiet_slots(agent: Agent, pods: tuple[SimPod, ...]) -> list[int]:
    """The pods' slots once their connections are all closed (node slot 0 never is quiet:
    every process of this machine counts there)."""
    for pod in pods:
        agent.settle(pod, lambda c: c.closed_in + c.closed_out == COUNT)
    return sorted(s for pod in pods for s in agent.owned_slots(pod.uid))


@pytest.mark.matrix  # whether podnet_sum loads depends on the kernel's helpers
def test_kernel_sums_equal_the_per_cpu_rows_summed(
    node: SimNode, start_agent: Callable[[], Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    agent = start_agent()
    dp = agent.core.datapath
    missing = {d.feature for d in features.probe()}
    assert dp.kernel_sums == (features.USERSPACE_SUMS not in missing)
    if not dp.kernel_sums:
        with pytest.raises(LibbpfError):
            dp.prog_fd(PROGRAM_SUM)
        pytest.skip(f"podnet_sum is not loaded here: {features.USERSPACE_SUMS}")

    exchange(node, a, b, 7500)
    slots = quiet_slots(agent, (a, b))
    assert slots
    per_cpu = {s: per_cpu_slot(dp, s) for s in slots}
    if dp._ncpus > 1:  # counted on two CPUs: the client's and the server's
        assert any(sum(1 for row in rows if any(row)) >= 2 for rows in per_cpu.values())
    truth = {s: column_sum(rows) for s, rows in per_cpu.items()}

    kernel = dp.read_slots(slots)
    assert {s: c.values() for s, c in kernel.items()} == truth
    assert kernel[slots[0]].values() != (0,) * len(abi.PodnetCounters())
    again = dp.read_slots(slots)  # nothing changed: the very same objects
    assert all(again[s] is kernel[s] for s in slots)

    owners, values = dp.read_peer_rows()
    mine = [r for r in range(len(values)) if r in slots or (owners[r] is not None and owners[r][0] in slots)]
    assert any(values[r] for r in mine)
    assert {r: values[r] for r in mine} == {r: column_sum(per_cpu_peer(dp, r)) for r in mine}
    _, values_again = dp.read_peer_rows()
    assert all(values_again[r] is values[r] for r in mine if any(values[r]))

    # a few rows per run (a node of many CPUs sums in several runs): the same sums
    monkeypatch.setattr(datapath, "SUM_BUDGET", 3 * dp._ncpus)
    dp._last_read, dp._last_peer_read = RowCache(), RowCache()  # nothing decoded before
    assert {s: c.values() for s, c in dp.read_slots(slots).items()} == truth
    assert {r: dp.read_peer_rows()[1][r] for r in mine} == {r: values[r] for r in mine}

    dp.kernel_sums = False  # the user-space sums of the same tables: the fallback's path
    try:
        assert {s: c.values() for s, c in dp.read_slots(slots).items()} == truth
        assert {r: dp.read_peer_rows()[1][r] for r in mine} == {r: values[r] for r in mine}
    finally:
        dp.kernel_sums = True
    assert {s: c.values() for s, c in dp.read_slots(slots).items()} == truth


@pytest.fixture
def two_cores(node: SimNode, tmp_path: Path, cgroup_root: Path) -> Iterator[list[Core]]:
    cores: list[Core] = []
    try:
        yield cores
    finally:
        for core in cores:
            core.close()


def test_without_kernel_sums_the_agent_reports_the_same(node: SimNode, tmp_path: Path, cgroup_root: Path,
                                                        two_cores: list[Core]) -> None:  # fmt: skip
    """Two agents count the same traffic, one summing in the kernel where it can, one in
    user space as on a kernel without the helpers (podnet_sum not loaded at all): both pods'
    figures (see figures()) and their peers' are the same."""
    a, b = node.add_pod("a"), node.add_pod("b")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    for sums in (True, False):
        core = Core(cgroup_root, PodsFileSource(pods_file, node.name))
        core.datapath.config = dataclasses.replace(core.datapath.config, kernel_sums=sums)
        core.start()
        two_cores.append(core)
    fallback = two_cores[1].datapath
    assert not fallback.kernel_sums
    with pytest.raises(LibbpfError):
        fallback.prog_fd(PROGRAM_SUM)
    assert fallback.sums.value_size == ctypes.sizeof(abi.PodnetCounters)

    exchange(node, a, b, 7501)
    agents = [Agent(node, core, pods_file) for core in two_cores]
    for agent in agents:
        quiet_slots(agent, (a, b))
    seen = []
    for core in two_cores:
        snap = core.collect()
        seen.append({s.uid: (figures(s.counters), s.peers) for s in snap.samples if s.uid in (a.uid, b.uid)})
    assert seen[0] == seen[1]
    assert seen[0][a.uid][0][abi.COUNTER_FIELDS.index("opened_out")] == COUNT
    assert seen[0][b.uid][0][abi.COUNTER_FIELDS.index("opened_in")] == COUNT
    assert seen[0][a.uid][1]  # peers counted


def figures(c: Counters) -> tuple[int, ...]:
    """What two objects counting the same traffic agree on: every counter, and how many
    values each histogram took. Not the latency itself: each object's program reads the
    clock on its own run, one after the other."""
    return c.values()[: len(abi.COUNTER_FIELDS)] + tuple(sum(c.histogram(h).buckets) for h in abi.HISTOGRAMS)


def test_a_kernel_without_the_helpers_is_a_cost_line_and_no_podnet_sum(
    cgroup_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `otel-podnet check` says where the helper probe fails (as before 5.19): the
    object loads without podnet_sum, and the missing helper is a cost, not a degraded
    metric."""

    real = features.probe

    def probe() -> tuple[features.Degraded, ...]:
        return real(has_helper=lambda prog_type, helper: helper != libbpf.BPF_FUNC_map_lookup_percpu_elem)

    monkeypatch.setattr(features, "probe", probe)
    lines = [r.line() for r in check._hooks(cgroup_root, default_object_path(), Capacity.for_pods(110))]
    attached = len(PROGRAMS_TRACING) + len(PROGRAMS_CGROUP)  # every program but podnet_sum
    assert f"ok   verifier     all {attached} programs load" in lines
    assert (
        "warn cost         per-CPU counters summed in user space (collection cost grows with the CPUs): the kernel "
        "lets no BPF_PROG_TYPE_SYSCALL program call bpf_map_lookup_percpu_elem (Linux < 5.19; probe: "
        "libbpf_probe_bpf_helper)"
    ) in lines
    assert all(not ln.startswith("FAIL") for ln in lines), lines
