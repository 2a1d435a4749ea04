"""The kernel side, seen from the agent: load and attach bpf/podnet.bpf.c, read and steer
its maps. Everything here goes through otel_podnet.libbpf."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from logging import getLogger
from pathlib import Path

from . import abi, features
from .capacity import DEFAULT_CAPACITY, Capacity
from .libbpf import BPF_F_MMAPABLE, BPF_NOEXIST, BpfObject, LibbpfError, Link, num_possible_cpus, prog_run_ctx
from .rows import RowCache
from .samples import ZERO, Counters

_logger = getLogger(__name__)

# attached in this order: podnet_state2 must run after podnet_state (see bpf/podnet.bpf.c)
PROGRAMS_TRACING = (
    "podnet_state",
    "podnet_state2",
    "podnet_retrans",
    "podnet_retrans2",
    "podnet_synack",
    "podnet_rst_tx",
    "podnet_rst_rx",
    "podnet_cgroup_rmdir",
)
PROGRAMS_CGROUP = ("podnet_ingress", "podnet_egress")
# run by the agent itself, never attached; loaded where the kernel has what it needs (issue 10)
PROGRAM_SUM = "podnet_sum"
# where podnet_sum loads (issue 10): the tables read straight from memory, not by system
# calls that copy them element by element (~0.3 us each, ~0.8 ms per collection at 110 pods)
MAPPED = ("podnet_sums", "podnet_peer_sums", "podnet_peer_owner")
# (row, CPU) pairs podnet_sum adds per run: ~100 ns each for a slot row, ~6 ms per run
SUM_BUDGET = 65536


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
    capacity: Capacity = DEFAULT_CAPACITY
    rtt_interval: float = 10.0  # seconds: at most one RTT sample per connection per interval
    peers: bool = True  # peer rows (issue 12); False (--max-peers 0): no peer work in the kernel
    # issue 10: the kernel sums the per-CPU tables (podnet_sum) where it can; False sums
    # them in user space everywhere, as on a kernel without (for comparisons)
    kernel_sums: bool = True


class AbiMismatch(LibbpfError):
    """The BPF object's maps do not have the layout otel_podnet/abi.py mirrors."""


def check_abi(obj: BpfObject) -> None:
    """Compare every map and global the agent uses with the object's own sizes (from its
    BTF and map definitions); one line naming every difference, before anything loads."""
    have = set(obj.maps())
    bad: list[str] = []
    for name, (key, value) in abi.MAPS.items():
        if name not in have:
            bad.append(f"map {name} missing")
            continue
        key_size, value_size, _ = obj.map_layout(name)
        want_key = 0 if key is None else ctypes.sizeof(key)
        if key_size != want_key:
            bad.append(f"{name} key {key_size} bytes, abi.py {want_key}")
        if value is not None and value_size != ctypes.sizeof(value):
            bad.append(f"{name} value {value_size} bytes, abi.py {ctypes.sizeof(value)} ({value.__name__})")
    for section, variables in abi.VARS.items():
        for var, ctype in variables.items():
            try:
                _, size = obj.section_var_offset(section, var)
            except LibbpfError:
                bad.append(f"{var} missing from {section}")
                continue
            if size != ctypes.sizeof(ctype):
                bad.append(f"{section} {var} {size} bytes, abi.py {ctypes.sizeof(ctype)}")
    for struct_name, ctype in abi.STRUCTS.items():
        try:
            size = obj.struct_size(struct_name)
        except LibbpfError:
            bad.append(f"struct {struct_name} missing")
            continue
        if size != ctypes.sizeof(ctype):
            bad.append(f"struct {struct_name} {size} bytes, abi.py {ctypes.sizeof(ctype)}")
    if bad:
        raise AbiMismatch(
            errno.EPROTO,
            f"{obj.path} does not match this agent's otel_podnet/abi.py ({'; '.join(bad)}): "
            "rebuild the object and the package together",
        )


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
        self.capacity = config.capacity
        self._obj: BpfObject | None = None
        self._ncpus = num_possible_cpus()
        self._per_cpu = (abi.PodnetCounters * self._ncpus)()  # reused by read_slot
        self._words = len(abi.PodnetCounters())
        self._unpack = struct.Struct(f"={self._words * self._ncpus}Q")
        # every slot on every CPU (user-space sums): filled by one batch lookup per collection
        self._all_slots: ctypes.Array[ctypes.c_uint8] = (ctypes.c_uint8 * 0)()
        self._mapped: dict[str, mmap.mmap] = {}  # MAPPED, where podnet_sum loads
        self.kernel_sums = False  # podnet_sum loaded: read_slots and read_peer_rows use it
        self._sum_fd = -1
        # the tables as decoded at the last read (read_slots, read_peer_rows)
        self._last_read: RowCache[Counters] = RowCache()
        self._last_peer_read: RowCache[tuple[int, ...]] = RowCache()
        self._last_peer_owners: RowCache[tuple[int, int, str]] = RowCache()
        self._peer_texts: dict[bytes, str] = {}  # packed remote address -> text
        self._links: list[Link] = []
        self.degraded: tuple[features.Degraded, ...] = ()

    # -- lifecycle ------------------------------------------------------------------------

    def open_and_load(self) -> None:
        obj = BpfObject(str(self.config.object_path))
        cap = self.capacity
        try:
            check_abi(obj)
            # before load: a program the kernel cannot run must stay out of it (podnet_sum)
            self.degraded = features.probe()
            sums = self.config.kernel_sums and not any(d.feature == features.USERSPACE_SUMS for d in self.degraded)
            cfg = abi.PodnetConfig(
                ephemeral_lo=self.config.ephemeral_ports[0], ephemeral_hi=self.config.ephemeral_ports[1]
            )
            obj.set_rodata("podnet_cfg", cfg)
            obj.set_rodata("podnet_max_slots", ctypes.c_uint32(cap.slots))
            obj.set_max_entries("podnet_stats", cap.slots)
            obj.set_max_entries("podnet_freeslot", cap.slots)
            obj.set_max_entries("podnet_cgroups", cap.cgroups)
            obj.set_max_entries("podnet_pod_ips", cap.pod_ips)
            obj.set_rodata("podnet_rtt_interval_ns", ctypes.c_uint64(int(self.config.rtt_interval * 1e9)))
            # peers (issue 12): the slots' overflow rows, then the rows the agent hands out
            peer_rows = cap.peer_rows if self.config.peers else 0
            obj.set_rodata("podnet_peer_rows", ctypes.c_uint32(cap.slots + peer_rows if peer_rows else 0))
            obj.set_max_entries("podnet_peer_stats", cap.slots + peer_rows if peer_rows else 1)
            obj.set_max_entries("podnet_peer_owner", cap.slots + peer_rows if peer_rows else 1)
            obj.set_max_entries("podnet_peer_idx", max(peer_rows, 1))
            obj.set_max_entries("podnet_peer_free", max(peer_rows, 1))
            # kernel-side sums (issue 10): one row per slot and peer row, or none at all
            obj.set_rodata("podnet_ncpus", ctypes.c_uint32(self._ncpus))
            obj.set_max_entries("podnet_sums", cap.slots if sums else 1)
            obj.set_max_entries("podnet_peer_sums", cap.slots + peer_rows if sums and peer_rows else 1)
            obj.set_autoload(PROGRAM_SUM, sums)
            for name in MAPPED if sums else ():
                obj.add_map_flags(name, BPF_F_MMAPABLE)
            obj.load()
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        for d in self.degraded:
            if d.cost:
                _logger.info("cost: %s", d.line())
            else:
                _logger.warning("degraded: %s", d.line())
        self.kernel_sums = sums
        self._sum_fd = obj.prog_fd(PROGRAM_SUM) if sums else -1
        self.stats = obj.map("podnet_stats")
        self.freeslot = obj.map("podnet_freeslot")
        self.cgroups = obj.map("podnet_cgroups")
        self.pod_ips = obj.map("podnet_pod_ips")
        self.health_map = obj.map("podnet_health")
        self.peer_stats = obj.map("podnet_peer_stats")
        self.peer_idx = obj.map("podnet_peer_idx")
        self.peer_free = obj.map("podnet_peer_free")
        self.peer_owner = obj.map("podnet_peer_owner")
        self.cgroups_gone = obj.map("podnet_cgroups_gone")
        self._gone_lost: int | None = None  # PODNET_H_GONE_LOST at the last gone_cgroups()
        self.sums = obj.map("podnet_sums")
        self.peer_sums = obj.map("podnet_peer_sums")
        for name in MAPPED if sums else ():
            self._mapped[name] = obj.map(name).mmap(obj.map_layout(name)[2])
        self.bss = obj.map(".bss")
        self._gen_offset = obj.section_var_offset(".bss", "podnet_gen")[0]
        self._gen = 0
        _logger.info(
            "kernel tables: %d slots (%.1f MiB of counters on %d possible CPUs), %d cgroups, %d pod IPs",
            cap.slots,
            cap.stats_bytes(self._ncpus, ctypes.sizeof(abi.PodnetCounters)) / 2**20,
            self._ncpus,
            cap.cgroups,
            cap.pod_ips,
        )

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

    def detach(self) -> None:
        """Detach the programs and keep the object and its maps: a later :meth:`attach`
        puts them back (bench/interleave.py switches between builds this way)."""
        for link in self._links:
            link.destroy()
        self._links.clear()

    def close(self) -> None:
        """Detach everything and free the object; safe to call twice."""
        for view in self._mapped.values():
            view.close()
        self._mapped.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
            self._links.clear()

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    def _object(self) -> BpfObject:
        if self._obj is None:
            raise LibbpfError(errno.EBADF, "datapath not loaded")
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
        # one unpack of the whole buffer, then a column sum: several times faster than
        # indexing ctypes arrays, which matters now that a row carries the histograms
        flat, n = self._unpack.unpack_from(per_cpu), self._words
        rows = [flat[i : i + n] for i in range(0, len(flat), n)]
        return Counters.from_values(map(sum, zip(*rows, strict=True)))

    def read_slots(self, slots: Iterable[int]) -> dict[int, Counters]:
        """Several slots' counters summed over every CPU, from one read of a table up to the
        highest slot asked for (not a read per slot).

        Where the kernel sums (issue 10: podnet_sum loaded, see :meth:`_kernel_sum`), the
        table read is podnet_sums, one summed row per slot, straight from memory (it is
        mapped: MAPPED): the cost does not grow with the CPUs. Elsewhere it is podnet_stats,
        by one batch lookup, every CPU's row of every slot, summed here: each
        CPU's row, read as one little-endian integer whose 64-bit lanes are the row's words,
        is added with a single integer addition in C, so a slot costs one addition per CPU
        instead of one Python step per word and CPU. A lane cannot carry into the next while
        its word's total over CPUs stays below 2**64, which every counter's total does (it
        is reported as a 64-bit value). Either way a slot whose bytes did not change since
        the last read (an idle pod) is not unpacked or summed again: the same Counters
        object is returned for it (otel_podnet.rows)."""
        wanted = list(slots)
        if not wanted:
            return {}
        row = ctypes.sizeof(abi.PodnetCounters)
        count = max(wanted) + 1  # the free-slot queue starts in order: often most of the table is unused
        summed = self.kernel_sums
        span = row if summed else self._ncpus * row
        if summed:
            self._kernel_sum(abi.SUM_SLOTS, count)
            table = self._mapped["podnet_sums"][: count * span]
        else:
            if len(self._all_slots) != self.capacity.slots * span:
                self._all_slots = (ctypes.c_uint8 * (self.capacity.slots * span))()
            self.stats.read_array(self._all_slots, count, span)
            table = ctypes.string_at(self._all_slots, count * span)
        from_row, from_bytes = Counters.from_row, int.from_bytes
        zero_row = bytes(row)

        def decode(raw: bytes) -> Counters:
            if summed:
                return from_row(raw) if raw != zero_row else ZERO
            total = 0
            for off in range(0, span, row):
                total += from_bytes(raw[off : off + row], "little")
            return from_row(total.to_bytes(row + 8, "little")) if total else ZERO

        rows = self._last_read.decode(table, span, decode)
        return {slot: rows[slot] for slot in wanted}

    def _kernel_sum(self, table: int, count: int) -> None:
        """Run podnet_sum: rows [0, count) of a per-CPU table (``abi.SUM_*``), each summed
        over every possible CPU into its sums map: one BPF_PROG_TEST_RUN where the rows
        times the CPUs stay within SUM_BUDGET (at 110 pods: 230 slots on up to 284 CPUs,
        1,513 peer rows on up to 43), else one run per that many rows. The program does not
        yield, so no single run holds the CPU for more than a few milliseconds."""
        step = max(1, SUM_BUDGET // self._ncpus)
        for first in range(0, count, step):
            n = min(step, count - first)
            done = prog_run_ctx(self._sum_fd, abi.PodnetSumArgs(table=table, first=first, count=n))
            if done != n:
                what = f"{PROGRAM_SUM} summed {done} of rows {first}-{first + n - 1} (table {table})"
                raise LibbpfError(errno.EIO, what)

    def zero_slot(self, slot: int) -> None:
        self.stats.update(ctypes.c_uint32(slot), (abi.PodnetCounters * self._ncpus)())

    # -- cgroups and pod IPs ----------------------------------------------------------------

    def cgroup_entries(self) -> Iterator[tuple[int, int, int]]:
        """(cgroup id, slot, kind) of every cgroup the kernel or we registered."""
        keys, values = self.cgroups.dump()
        for (cgid,), (slot, kind) in zip(_U64.iter_unpack(keys), _CGROUP.iter_unpack(values), strict=True):
            yield cgid, slot, kind

    def set_cgroup(self, cgid: int, slot: int, kind: int, only_new: bool = False) -> bool:
        """Insert or update a cgroup's entry; False when ``only_new`` and the kernel saw it
        first. Raises MapFull when the map is full."""
        try:
            self.cgroups.update(
                ctypes.c_uint64(cgid), abi.PodnetCgroup(slot=slot, kind=kind), BPF_NOEXIST if only_new else 0
            )
        except LibbpfError as exc:
            if only_new and exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def delete_cgroup(self, cgid: int) -> None:
        self.cgroups.delete(ctypes.c_uint64(cgid))

    def gone_cgroups(self) -> set[int] | None:
        """The ids of the cgroups removed since the last call, as the kernel queued them
        (podnet_cgroup_rmdir); None when some may be missing and every cgroup must be
        checked: at the first call (removals between the agent's walk of the hierarchy and
        attach were not seen) and when the queue was full since the last call."""
        out: set[int] = set()
        v = ctypes.c_uint64()
        while self.cgroups_gone.pop(v):
            out.add(int(v.value))
        lost = self.health()[abi.H_GONE_LOST]
        complete = self._gone_lost is not None and lost == self._gone_lost
        self._gone_lost = lost
        return out if complete else None

    def set_pod_ip(self, address: str, slot: int) -> None:
        """Raises MapFull when the map is full."""
        self.pod_ips.update(ip_key(address), abi.PodnetIpVal(slot=slot))

    def delete_pod_ip(self, address: str) -> None:
        self.pod_ips.delete(ip_key(address))

    def bump_generation(self) -> None:
        """Make every socket resolve its slot again on its next event."""
        self._gen = (self._gen + 1) & 0xFFFFFFFF
        value = (ctypes.c_uint8 * self.bss.value_size)()
        self.bss.lookup(ctypes.c_uint32(0), value)
        ctypes.c_uint32.from_buffer(value, self._gen_offset).value = self._gen
        self.bss.update(ctypes.c_uint32(0), value)

    def health(self) -> tuple[int, ...]:
        per_cpu = (ctypes.c_uint64 * self._ncpus)()
        out = []
        for i in range(abi.NHEALTH):
            out.append(sum(per_cpu) if self.health_map.lookup(ctypes.c_uint32(i), per_cpu) else 0)
        return tuple(out)

    # -- peers (issue 12) -----------------------------------------------------------------------

    @property
    def peer_rows(self) -> int:
        """Rows of podnet_peer_stats: the slots' overflow rows and the allocatable ones (0: off)."""
        return self.capacity.slots + self.capacity.peer_rows if self.config.peers else 0

    def push_free_peer_row(self, row: int) -> None:
        self.peer_free.push(ctypes.c_uint32(row))

    def read_peer_rows(self) -> tuple[list[tuple[int, int, str] | None], list[tuple[int, ...]]]:
        """Every peer row: its owner (slot, used, remote address) for the allocatable rows
        (None for the slots' overflow rows; no address for an unused row), and its counters
        summed over every CPU: where the kernel sums, one run of podnet_sum and two reads
        of mapped memory (MAPPED), else two batch lookups.

        As in :meth:`read_slots` (issue 10): the kernel sums the rows where it can, else a
        row's CPUs are summed here as whole integers; a row of zeros (most of the table)
        and a row whose bytes did not change since the last read are not unpacked or summed
        at all (the same tuple is returned for the latter), and an address is turned into
        text once."""
        rows, n, slots = self.peer_rows, self._ncpus, self.capacity.slots
        size = ctypes.sizeof(abi.PodnetPeerOwner)
        # the allocatable rows' owners: the slots' rows have none
        mapped = self._mapped.get("podnet_peer_owner")
        if mapped is not None:
            owners = mapped[slots * size : rows * size]
        else:
            buf = (abi.PodnetPeerOwner * (rows - slots))()
            self.peer_owner.read_array(buf, rows - slots, size, first=slots)
            owners = ctypes.string_at(buf, (rows - slots) * size)
        words = len(abi.PEER_FIELDS)
        row_size = ctypes.sizeof(abi.PodnetPeerCounters)
        summed = self.kernel_sums
        if summed:
            self._kernel_sum(abi.SUM_PEERS, rows)
            span = row_size
            table = self._mapped["podnet_peer_sums"][: rows * span]
        else:
            span = n * row_size
            stats = (abi.PodnetPeerCounters * (rows * n))()
            self.peer_stats.read_array(stats, rows, span)
            table = ctypes.string_at(stats, rows * span)
        unpack, from_bytes = struct.Struct(f"<{words}Q").unpack, int.from_bytes
        zero_raw, zero = bytes(span), (0,) * words

        def decode(raw: bytes) -> tuple[int, ...]:
            if raw == zero_raw:
                return zero
            if summed:
                return unpack(raw)
            total = 0
            for off in range(0, span, row_size):
                total += from_bytes(raw[off : off + row_size], "little")
            return unpack(total.to_bytes(row_size + 8, "little")[:row_size])

        values = self._last_peer_read.decode(table, span, decode)
        texts = self._peer_texts

        def owner(raw: bytes) -> tuple[int, int, str]:
            slot, used, packed = _PEER_OWNER.unpack(raw)
            if not used:
                return (slot, 0, "")
            text = texts.get(packed)
            if text is None:
                if len(texts) >= 4 * rows:  # bounded: remote addresses come and go
                    texts.clear()
                text = texts[packed] = ip_text(packed)
            return (slot, used, text)

        out: list[tuple[int, int, str] | None] = [None] * slots
        out += self._last_peer_owners.decode(owners, size, owner)
        return out, values

    def free_peer_row(self, row: int, slot: int, address: str) -> None:
        """Take a row out of the index (its sockets find a new one once the generation is
        bumped); :meth:`recycle_peer_row` returns it to the queue a round later."""
        key = abi.PodnetPeerKey(slot=slot)
        ctypes.memmove(key.addr, ip_key(address).addr, 16)
        val = abi.PodnetPeerVal()
        if self.peer_idx.lookup(key, val) and val.row == row:
            self.peer_idx.delete(key)

    def recycle_peer_row(self, row: int) -> None:
        """Zero a row no socket uses any more and give it back to the kernel."""
        self.peer_stats.update(ctypes.c_uint32(row), (abi.PodnetPeerCounters * self._ncpus)())
        if row >= self.capacity.slots:
            self.peer_owner.update(ctypes.c_uint32(row), abi.PodnetPeerOwner())
            self.push_free_peer_row(row)


_PEER_OWNER = struct.Struct("<II16s")  # abi.PodnetPeerOwner
assert _PEER_OWNER.size == ctypes.sizeof(abi.PodnetPeerOwner)
# MAPPED arrays are read at the stride of their ctypes mirrors: the kernel's, 8-byte aligned
assert all(ctypes.sizeof(t) % 8 == 0 for t in (abi.PodnetCounters, abi.PodnetPeerCounters, abi.PodnetPeerOwner))
_U64 = struct.Struct("=Q")  # a podnet_cgroups key
_CGROUP = struct.Struct("=II")  # abi.PodnetCgroup
assert _CGROUP.size == ctypes.sizeof(abi.PodnetCgroup)


def ip_text(packed: bytes) -> str:
    """The address of a map key (IPv4 as ::ffff:a.b.c.d) as text."""
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(packed[12:]))
    return str(ipaddress.IPv6Address(packed))
