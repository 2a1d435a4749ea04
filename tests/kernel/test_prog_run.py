"""BPF_PROG_TEST_RUN on the cgroup_skb programs with crafted packets: every packet passes
(return 1), and IP bytes, packets and payload are counted as the headers say. (The kernel
itself refuses to run an IPv4 packet shorter than its 20-byte header.)"""

from __future__ import annotations

import ctypes
import os
import secrets
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from otel_podnet import abi, features
from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.datapath import PROGRAM_SUM, Datapath, DatapathConfig, default_object_path
from otel_podnet.libbpf import prog_run_ctx, prog_test_run
from otel_podnet.samples import Counters
from otel_podnet.simnode import sh

# every program through each kernel's verifier and JIT: also in the kernel matrix's guests
pytestmark = pytest.mark.matrix

ETH_IP = b"\x02" * 12 + b"\x08\x00"
ETH_IP6 = b"\x02" * 12 + b"\x86\xdd"
ETH_ARP = b"\x02" * 12 + b"\x08\x06"
SRC4, DST4 = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 3])
SRC6, DST6 = bytes.fromhex("20010db8000000000000000000000002"), bytes.fromhex("20010db8000000000000000000000003")


def ipv4(proto: int, body: bytes, options: bytes = b"", total: int | None = None) -> bytes:
    ihl = 5 + len(options) // 4
    length = total if total is not None else ihl * 4 + len(body)
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 1, 0, 64, proto, 0, SRC4, DST4) + options + body


def ipv6(nexthdr: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), nexthdr, 64, SRC6, DST6) + body


def tcp(payload: bytes, options: bytes = b"", flags: int = 0x18) -> bytes:
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", 40000, 80, 1000, 1, doff << 4, flags, 65535, 0, 0) + options + payload


def udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload


CLONE_NEWNET = 0x40000000


def _enter_netns(path: str) -> None:
    """Move the calling thread (only) into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@dataclass
class Runner:
    """Runs packets from a thread inside a namespace of the test's own, in on a veth of it
    (prog_test_run hands a packet in on a device of the caller's namespace, else on lo,
    whose traffic is not counted)."""

    dp: Datapath
    ifindex: int
    netns_thread: ThreadPoolExecutor

    def run(self, prog: str, frame: bytes, ifindex: int | None = None) -> Counters:
        before = self._mine()
        dev = self.ifindex if ifindex is None else ifindex
        ret = self.netns_thread.submit(prog_test_run, self.dp.prog_fd(prog), frame, ifindex=dev).result()
        assert ret == 1  # never dropped
        after = self._mine()
        return Counters.from_values(x - y for x, y in zip(after.values(), before.values(), strict=True))

    def _mine(self) -> Counters:
        """The counters of the slot the kernel gave this process's cgroup."""
        total = Counters()
        for _, slot, _ in self.dp.cgroup_entries():
            total = total + self.dp.read_slot(slot)
        return total


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    netns = f"pnrun{secrets.token_hex(3)}"
    sh("ip", "netns", "add", netns)
    dp = Datapath(DatapathConfig(find_cgroup2_mount(), default_object_path()))
    pool = ThreadPoolExecutor(1, initializer=_enter_netns, initargs=(f"/run/netns/{netns}",))
    try:
        sh("ip", "-n", netns, "link", "add", "wire0", "type", "veth", "peer", "name", "wire1")
        ifindex = int(sh("ip", "netns", "exec", netns, "cat", "/sys/class/net/wire0/ifindex"))
        dp.open_and_load()
        for slot in range(1, 16):
            dp.push_free_slot(slot)
        yield Runner(dp, ifindex, pool)
    finally:
        pool.shutdown()
        dp.close()
        sh("ip", "netns", "del", netns, check=False)


P100 = b"x" * 100


@pytest.mark.parametrize(
    ("frame", "tx_tcp", "tx_udp", "payload"),
    [
        pytest.param(ETH_IP + ipv4(6, tcp(P100)), 140, 0, 100, id="ipv4-tcp"),
        pytest.param(ETH_IP + ipv4(6, tcp(P100), options=b"\x01\x01\x01\x00"), 144, 0, 100, id="ipv4-options-tcp"),
        pytest.param(ETH_IP + ipv4(6, tcp(P100, options=b"\x01" * 12)), 152, 0, 100, id="ipv4-tcp-options"),
        pytest.param(ETH_IP6 + ipv6(6, tcp(P100)), 160, 0, 100, id="ipv6-tcp"),
        pytest.param(ETH_IP + ipv4(17, udp(b"u" * 512)), 0, 540, 0, id="ipv4-udp"),
        pytest.param(ETH_IP6 + ipv6(17, udp(b"u" * 512)), 0, 560, 0, id="ipv6-udp"),
        pytest.param(ETH_IP + ipv4(6, tcp(b"")[:10]), 30, 0, 0, id="truncated-tcp-header"),
        pytest.param(ETH_IP + ipv4(17, b"\x00" * 4), 0, 24, 0, id="truncated-udp-header"),
        pytest.param(ETH_IP + ipv4(6, tcp(b"", flags=0x02)), 40, 0, 0, id="ipv4-syn"),
        # IHL claims 60 bytes of header, the packet has 20: an IP packet, no payload known
        pytest.param(
            ETH_IP + struct.pack("!BBHHHBBH4s4s", 0x4F, 0, 20, 1, 0, 64, 6, 0, SRC4, DST4),
            20,
            0,
            0,
            id="truncated-ip-options",
        ),
    ],
)
@pytest.mark.parametrize("prog", ["podnet_egress", "podnet_ingress"])
def test_counted(runner: Runner, prog: str, frame: bytes, tx_tcp: int, tx_udp: int, payload: int) -> None:
    c = runner.run(prog, frame)
    if prog == "podnet_egress":
        assert (c.bytes_tx_tcp, c.bytes_tx_udp) == (tx_tcp, tx_udp)
        assert (c.packets_tx_tcp, c.packets_tx_udp) == (int(tx_tcp > 0), int(tx_udp > 0))
        assert c.payload_tx == payload
        assert c.bytes_rx_tcp == c.bytes_rx_udp == 0
    else:
        # received payload follows the socket's rcv_nxt; the test socket is not TCP
        assert (c.bytes_rx_tcp, c.bytes_rx_udp) == (tx_tcp, tx_udp)
        assert (c.packets_rx_tcp, c.packets_rx_udp) == (int(tx_tcp > 0), int(tx_udp > 0))
        assert c.bytes_tx_tcp == c.bytes_tx_udp == c.payload_rx == 0


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(ETH_ARP + b"\x00" * 28, id="arp"),
        pytest.param(ETH_IP + ipv4(1, b"\x08\x00" + b"\x00" * 62), id="icmp"),
        pytest.param(ETH_IP6 + ipv6(0, b"\x06\x00" + b"\x00" * 6 + tcp(P100)), id="ipv6-extension-header"),
        pytest.param(
            ETH_IP + struct.pack("!BBHHHBBH4s4s", 0x43, 0, 60, 1, 0, 64, 6, 0, SRC4, DST4) + b"\x00" * 40,
            id="ipv4-bad-ihl",
        ),
    ],
)
@pytest.mark.parametrize("prog", ["podnet_egress", "podnet_ingress"])
def test_not_counted_never_dropped(runner: Runner, prog: str, frame: bytes) -> None:
    c = runner.run(prog, frame)
    assert c == Counters()


@pytest.mark.parametrize("prog", ["podnet_egress", "podnet_ingress"])
def test_loopback_not_counted_never_dropped(runner: Runner, prog: str) -> None:
    """The same TCP and UDP packets counted above, handed in on lo: not network traffic."""
    for frame in (ETH_IP + ipv4(6, tcp(P100)), ETH_IP6 + ipv6(17, udp(b"u" * 512))):
        assert runner.run(prog, frame, ifindex=1) == Counters()
        assert runner.run(prog, frame) != Counters()  # and counted on a network device


def test_podnet_sum_sums_the_rows_asked_for_up_to_the_tables_end(runner: Runner) -> None:
    """podnet_sum (issue 10) through this kernel's verifier wherever the probe finds what
    it needs, then its contract: every row asked for, each equal to its per-CPU rows
    summed; a range past the table's end stops there; an unknown table is -1."""
    dp = runner.dp
    assert dp.kernel_sums == (features.USERSPACE_SUMS not in {d.feature for d in features.probe()})
    if not dp.kernel_sums:
        pytest.skip(f"podnet_sum is not loaded here: {features.USERSPACE_SUMS}")
    assert runner.run("podnet_egress", ETH_IP + ipv4(6, tcp(P100))) != Counters()
    fd, slots, peers = dp.prog_fd(PROGRAM_SUM), dp.capacity.slots, dp.peer_rows

    def run(table: int, first: int, count: int) -> int:
        return prog_run_ctx(fd, abi.PodnetSumArgs(table=table, first=first, count=count))

    assert run(abi.SUM_SLOTS, 0, slots) == slots
    row = (abi.PodnetCounters)()
    counted = [s for _, s, _ in dp.cgroup_entries()]
    assert counted
    for slot in {0, *counted, slots - 1}:
        assert dp.sums.lookup(ctypes.c_uint32(slot), row)
        assert tuple(row) == dp.read_slot(slot).values(), slot
    assert any(dp.read_slot(s) != Counters() for s in counted)
    assert run(abi.SUM_SLOTS, slots - 2, 5) == 2
    assert run(abi.SUM_PEERS, 0, peers) == peers
    assert run(abi.SUM_PEERS, peers, 1) == 0
    assert run(abi.SUM_SLOTS, 0, 0) == 0
    assert run(2, 0, 1) == -1
