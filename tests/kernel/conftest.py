"""Fixtures for tests against the real kernel: a simulated node and the agent core on it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_podnet import abi
from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.core import Core
from otel_podnet.datapath import default_object_path
from otel_podnet.inventory import PodsFileSource
from otel_podnet.samples import Counters
from otel_podnet.simnode import SimNode, SimPod


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BPF, network namespaces, cgroups)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if not default_object_path().exists():
        return f"BPF object not built: {default_object_path()} (run `make build`)"
    return None


_skip = _reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _skip:
        for item in items:
            if "/kernel/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=_skip))


@pytest.fixture(scope="session")
def cgroup_root() -> Path:
    return find_cgroup2_mount()


@pytest.fixture
def node(cgroup_root: Path) -> Iterator[SimNode]:
    n = SimNode(cgroup_root)
    try:
        yield n
    finally:
        n.cleanup()


def cgroup_id(cgroup: Path) -> int:
    """The kernel's id of a cgroup v2 directory (its inode number)."""
    return os.stat(cgroup).st_ino


@dataclass
class Agent:
    """The agent core running in-process on a simulated node, fed by a pods file."""

    node: SimNode
    core: Core
    pods_file: Path

    def publish(self) -> None:
        self.node.write_pod_list(self.pods_file)

    def counters(self, pod: SimPod | None) -> Counters:
        snap = self.core.collect()
        uid = pod.uid if pod else None
        for s in snap.samples:
            if s.uid == uid:
                return s.counters
        return Counters()

    def cgroup_map(self) -> dict[int, tuple[int, int]]:
        """cgroup id -> (slot, kind): the kernel's podnet_cgroups map as it is now."""
        return {cgid: (slot, kind) for cgid, slot, kind in self.core.datapath.cgroup_entries()}

    def pod_slots(self, pod: SimPod) -> dict[int, tuple[int, int]]:
        """The map entries of the pod's own cgroups (its pod and container cgroups)."""
        mine = {cgroup_id(cg) for cg in (pod.pod_cgroup, pod.cgroup) if cg is not None}
        return {cgid: v for cgid, v in self.cgroup_map().items() if cgid in mine}

    def owned_slots(self, uid: str) -> set[int]:
        """The counting slots the agent holds for one pod (its cgroups' and its IP's)."""
        return {slot for slot, owner in self.core.attributor._slot_owner.items() if owner == uid}

    def witness(self, cgroup: Path) -> int:
        """Count one node cgroup in a slot of its own from now on, so a test can read the
        traffic of a node process it started itself exactly: every other process of this
        machine (downloads, other test runs) also counts for the node. The cgroup stays a
        host cgroup (CG_HOST), which the agent never reclassifies."""
        slot = self.core.datapath.pop_free_slot()
        assert slot is not None
        self.core.datapath.set_cgroup(cgroup_id(cgroup), slot, abi.CG_HOST)
        self.core.datapath.bump_generation()
        return slot

    def settle(self, pod: SimPod | None, check: Callable[[Counters], bool], timeout: float = 10) -> Counters:
        """Collect until ``check`` holds (the kernel may still be finishing a close), then
        return what was read; the caller asserts exact figures on it."""
        deadline = time.monotonic() + timeout
        c = self.counters(pod)
        while not check(c) and time.monotonic() < deadline:
            time.sleep(0.1)
            c = self.counters(pod)
        return c


@pytest.fixture
def start_agent(node: SimNode, tmp_path: Path, cgroup_root: Path) -> Iterator[Callable[[], Agent]]:
    started: list[Core] = []

    def _start() -> Agent:
        pods_file = tmp_path / "pods.yaml"
        node.write_pod_list(pods_file)
        core = Core(cgroup_root, PodsFileSource(pods_file, node.name))
        core.start()
        started.append(core)
        return Agent(node, core, pods_file)

    try:
        yield _start
    finally:
        for core in started:
            core.close()
