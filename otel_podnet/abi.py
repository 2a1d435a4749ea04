"""ctypes mirror of bpf/podnet.h: the layout shared with the BPF programs."""

from __future__ import annotations

import ctypes
from typing import Any

# The sizes the object is compiled with; the agent resizes the maps at load (capacity.py).
MAX_SLOTS = 4096
SLOT_NODE = 0
MAX_CGROUPS = 65536
MAX_POD_IPS = 16384

CG_UNKNOWN = 0
CG_POD = 1
CG_HOST = 2

H_SLOTS_EXHAUSTED = 0
H_CGROUPS_FULL = 1
H_NO_STORAGE = 2
H_SLOTS_ALLOCATED = 3
H_PEERS_FULL = 4  # peers (issue 12): no free peer row, counted in the slot's overflow row
H_GONE_LOST = 5  # podnet_cgroups_gone was full: a cgroup's removal was not queued
NHEALTH = 6

# Field order of struct podnet_counters, flattened: names used by samples.Counters.
COUNTER_FIELDS: tuple[str, ...] = (
    "bytes_tx_tcp", "bytes_tx_udp", "bytes_rx_tcp", "bytes_rx_udp",
    "packets_tx_tcp", "packets_tx_udp", "packets_rx_tcp", "packets_rx_udp",
    "payload_tx", "payload_rx",
    "opened_out", "opened_in",
    "adopted_out", "adopted_in",
    "closed_out", "closed_in",
    "failed_refused", "failed_timeout", "failed_unreachable", "failed_reset", "failed_other",
    "retransmits",
    "resets_tx", "resets_rx",
)  # fmt: skip

# Latency histograms (issue 11), appended to struct podnet_counters after the fields above:
# struct podnet_hist connect[PODNET_NDIRS], rtt[PODNET_NDIRS], each HIST_BUCKETS bucket
# counts then the sum in nanoseconds. Bucket i holds values <= 2**i microseconds (and above
# the previous bound); the last bucket is everything above HIST_BOUNDS_US[-1].
HIST_BUCKETS = 28
HISTOGRAMS: tuple[str, ...] = ("connect_out", "connect_in", "rtt_out", "rtt_in")
HIST_WORDS = HIST_BUCKETS + 1
HIST_BOUNDS_US: tuple[int, ...] = tuple(2**i for i in range(HIST_BUCKETS - 1))

PodnetCounters = ctypes.c_uint64 * (len(COUNTER_FIELDS) + len(HISTOGRAMS) * HIST_WORDS)


class PodnetCgroup(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("kind", ctypes.c_uint32)]


class PodnetIpKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16)]


class PodnetIpVal(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class PodnetSock(ctypes.Structure):
    """Socket storage (struct podnet_sock): the kernel's alone, mirrored for its size."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("gen", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("fin_seq", ctypes.c_uint32),
        ("open_slot", ctypes.c_uint32),
        ("pad_line", ctypes.c_uint8 * 44),
        ("seq_hw", ctypes.c_uint64 * 2),
        ("syn_ns", ctypes.c_uint64),
        ("rtt_next_ns", ctypes.c_uint64),
        ("peer_row", ctypes.c_uint32),
        ("peer_pad", ctypes.c_uint32),
        ("retrans_seen", ctypes.c_uint32),
        ("ev_note", ctypes.c_uint32),
    ]


class PodnetConfig(ctypes.Structure):
    _fields_ = [("ephemeral_lo", ctypes.c_uint16), ("ephemeral_hi", ctypes.c_uint16), ("pad", ctypes.c_uint32)]


# Peers (issue 12): struct podnet_peer_counters and friends (podnet.h).
PEER_ROWS = 8192
PEER_NONE = 0xFFFFFFFF
PEER_FIELDS: tuple[str, ...] = (
    "bytes_tx", "bytes_rx",
    "opened_out", "opened_in",
    "failed_refused", "failed_timeout", "failed_unreachable", "failed_reset", "failed_other",
)  # fmt: skip
PodnetPeerCounters = ctypes.c_uint64 * len(PEER_FIELDS)


class PodnetPeerKey(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class PodnetPeerVal(ctypes.Structure):
    _fields_ = [("row", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class PodnetPeerOwner(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("used", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


# Kernel-side sums (issue 10): podnet_sum's context, and the tables it sums (podnet.h).
SUM_SLOTS = 0  # podnet_stats into podnet_sums
SUM_PEERS = 1  # podnet_peer_stats into podnet_peer_sums


class PodnetSumArgs(ctypes.Structure):
    _fields_ = [("table", ctypes.c_uint32), ("first", ctypes.c_uint32), ("count", ctypes.c_uint32)]


# Every map the agent reads or writes, with the ctypes key and value it uses for it: compared
# with the object's own sizes at open (datapath.check_abi), so that a podnet.h changed without
# this file refuses to run instead of reading garbage. None: a side the agent never touches
# (a queue has no key; .bss and .rodata are checked per variable below). Socket storage
# values are the kernel's business, but their size is checked all the same.
MAPS: dict[str, tuple[type[Any] | None, type[Any] | None]] = {
    "podnet_stats": (ctypes.c_uint32, PodnetCounters),
    "podnet_freeslot": (None, ctypes.c_uint32),
    "podnet_cgroups": (ctypes.c_uint64, PodnetCgroup),
    "podnet_pod_ips": (PodnetIpKey, PodnetIpVal),
    "podnet_socks": (ctypes.c_int, PodnetSock),
    "podnet_health": (ctypes.c_uint32, ctypes.c_uint64),
    "podnet_peer_stats": (ctypes.c_uint32, PodnetPeerCounters),
    "podnet_peer_idx": (PodnetPeerKey, PodnetPeerVal),
    "podnet_peer_free": (None, ctypes.c_uint32),
    "podnet_peer_owner": (ctypes.c_uint32, PodnetPeerOwner),
    "podnet_cgroups_gone": (None, ctypes.c_uint64),
    "podnet_sums": (ctypes.c_uint32, PodnetCounters),
    "podnet_peer_sums": (ctypes.c_uint32, PodnetPeerCounters),
}

# Structs the agent hands a program that no map carries, by name in the object's BTF.
STRUCTS: dict[str, type[Any]] = {"podnet_sum_args": PodnetSumArgs}

# Global variables the agent writes, by data section: their BTF sizes are checked too.
VARS: dict[str, dict[str, type[Any]]] = {
    ".bss": {"podnet_gen": ctypes.c_uint32},
    ".rodata": {
        "podnet_cfg": PodnetConfig,
        "podnet_max_slots": ctypes.c_uint32,
        "podnet_rtt_interval_ns": ctypes.c_uint64,
        "podnet_peer_rows": ctypes.c_uint32,
        "podnet_ncpus": ctypes.c_uint32,
    },
}
