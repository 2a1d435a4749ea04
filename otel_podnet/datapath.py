"""The kernel side, seen from the agent: load and attach bpf/podnet.bpf.c, read and steer
its maps. Everything here goes through otel_podnet.libbpf."""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from logging import getLogger
from pathlib import Path

from . import abi, features
from .libbpf import BPF_NOEXIST, BpfObject, LibbpfError, Link, num_possible_cpus
from .samples import Counters

_logger = getLogger(__name__)

PROGRAMS_TRACING = ("podnet_state", "podnet_retrans", "podnet_rst_tx", "podnet_rst_rx")
PROGRAMS_CGROUP = ("podnet_ingress", "podnet_egress")


def default_object_path() -> Path:
    """The BPF object compiled into the package at build time."""
    env = os.environ.get("PODNET_BPF_OBJECT")
    if env:
        return Path(env)
    return Path(str(resources.files("otel_podnet") / "bpf" / "podnet.bpf.o"))


@dataclass(frozen=True)
class DatapathConfig:
    cgroup_root: Path
    object_path: Path
    ephemeral_ports: tuple[int, int] = (32768, 60999)


def ip_key(address: str) -> abi.PodnetIpKey:
    """The map key of an address: IPv6 form, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(address)
    packed = (b"\x00" * 10 + b"\xff\xff" + ip.packed) if ip.version == 4 else ip.packed
    key = abi.PodnetIpKey()
    ctypes.memmove(key.addr, packed, 16)
    return key


class Datapath:
    """The loaded and attached programs and their maps."""

    def __init__(self, config: DatapathConfig) -> None:
        self.config = config
        self._obj: BpfObject | None = None
        self._ncpus = num_possible_cpus()
        self._per_cpu = (abi.PodnetCounters * self._ncpus)()  # reused by read_slot
        self._links: list[Link] = []
        self.degraded: tuple[features.Degraded, ...] = ()

    # -- lifecycle ------------------------------------------------------------------------

    def open_and_load(self) -> None:
        obj = BpfObject(str(self.config.object_path))
        try:
            cfg = abi.PodnetConfig(
                ephemeral_lo=self.config.ephemeral_ports[0], ephemeral_hi=self.config.ephemeral_ports[1]
            )
            obj.set_rodata("podnet_cfg", cfg)
            obj.load()
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self.degraded = features.probe()
        for d in self.degraded:
            _logger.warning("degraded: %s", d.line())
        self.stats = obj.map("podnet_stats", 4, ctypes.sizeof(abi.PodnetCounters))
        self.freeslot = obj.map("podnet_freeslot", 0, 4)
        self.cgroups = obj.map("podnet_cgroups", 8, ctypes.sizeof(abi.PodnetCgroup))
        self.pod_ips = obj.map("podnet_pod_ips", 16, ctypes.sizeof(abi.PodnetIpVal))
        self.health_map = obj.map("podnet_health", 4, 8)
        self.bss = obj.bss_map(4)
        self._gen = 0

    def attach(self) -> None:
        """Tracepoints first, so every connection that opens from now on is seen opening;
        then the cgroup programs, whose first packet of an older connection adopts it."""
        obj = self._object()
        for name in PROGRAMS_TRACING:
            self._links.append(obj.attach(name))
        root = str(self.config.cgroup_root)
        for name in PROGRAMS_CGROUP:
            self._links.append(obj.attach_cgroup(name, root))
        _logger.info("attached %d programs (cgroup root %s)", len(self._links), root)

    def close(self) -> None:
        """Detach everything and free the object; safe to call twice."""
        if self._obj is not None:
            self._obj.close()
            self._obj = None
            self._links.clear()

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    def _object(self) -> BpfObject:
        if self._obj is None:
            raise LibbpfError(9, "datapath not loaded")
        return self._obj

    def prog_fd(self, name: str) -> int:
        return self._object().prog_fd(name)

    # -- slots ----------------------------------------------------------------------------

    def push_free_slot(self, slot: int) -> None:
        self.freeslot.push(ctypes.c_uint32(slot))

    def pop_free_slot(self) -> int | None:
        v = ctypes.c_uint32()
        return int(v.value) if self.freeslot.pop(v) else None

    def read_slot(self, slot: int) -> Counters:
        """A slot's counters summed over every CPU."""
        per_cpu = self._per_cpu
        if not self.stats.lookup(ctypes.c_uint32(slot), per_cpu):
            return Counters()
        return Counters.from_values(sum(col) for col in zip(*per_cpu, strict=True))

    def zero_slot(self, slot: int) -> None:
        self.stats.update(ctypes.c_uint32(slot), (abi.PodnetCounters * self._ncpus)())

    # -- cgroups and pod IPs ----------------------------------------------------------------

    def cgroup_entries(self) -> Iterator[tuple[int, int, int]]:
        """(cgroup id, slot, kind) of every cgroup the kernel or we registered."""
        for key, val in self.cgroups.items(ctypes.c_uint64, abi.PodnetCgroup):
            yield int(key), int(val.slot), int(val.kind)

    def set_cgroup(self, cgid: int, slot: int, kind: int, only_new: bool = False) -> bool:
        try:
            self.cgroups.update(
                ctypes.c_uint64(cgid), abi.PodnetCgroup(slot=slot, kind=kind), BPF_NOEXIST if only_new else 0
            )
        except LibbpfError as exc:
            if only_new and exc.errno == 17:  # EEXIST: the kernel saw it first
                return False
            raise
        return True

    def delete_cgroup(self, cgid: int) -> None:
        self.cgroups.delete(ctypes.c_uint64(cgid))

    def set_pod_ip(self, address: str, slot: int) -> None:
        self.pod_ips.update(ip_key(address), abi.PodnetIpVal(slot=slot))

    def delete_pod_ip(self, address: str) -> None:
        self.pod_ips.delete(ip_key(address))

    def bump_generation(self) -> None:
        """Make every socket resolve its slot again on its next event."""
        self._gen = (self._gen + 1) & 0xFFFFFFFF
        self.bss.update(ctypes.c_uint32(0), ctypes.c_uint32(self._gen))

    def health(self) -> tuple[int, ...]:
        per_cpu = (ctypes.c_uint64 * self._ncpus)()
        out = []
        for i in range(abi.NHEALTH):
            out.append(sum(per_cpu) if self.health_map.lookup(ctypes.c_uint32(i), per_cpu) else 0)
        return tuple(out)
