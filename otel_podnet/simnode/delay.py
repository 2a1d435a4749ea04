"""A delay line between two interfaces, in user space: ``python -m otel_podnet.simnode.delay``.

The kernels here have neither netem nor sch_fq, so a link with a known delay is made by a
relay: two AF_PACKET sockets, one on each interface of a namespace of its own, copying
every frame from one to the other with its offload metadata (PACKET_VNET_HDR). Frames
that arrive on ``--delayed`` are held ``--delay`` seconds first; frames the other way pass
at once.

Bounded: at most ``--max-held`` frames are held (more are dropped and counted), it exits
after ``--lifetime`` seconds or on SIGTERM, and prints one JSON line of what it did
(:class:`Report`): a test reads from it which frames left later than their due time, since
on a shared machine even a real-time process can lose its CPU for milliseconds.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # a frame we sent ourselves, looped back to our socket
SOL_PACKET = 263
PACKET_VNET_HDR = 15
LATE_MARK_US = 1_000  # a frame released later than this past its due time is listed


@dataclass(frozen=True)
class Report:
    """What a relay did: frames passed at once, held, dropped, and how late the held ones
    left (the lateness of each one later than :data:`LATE_MARK_US`, in microseconds)."""

    passed: int
    delayed: int
    dropped: int
    late_max_us: int
    late_us: tuple[int, ...]

    @classmethod
    def parse(cls, line: str) -> Report:
        d = json.loads(line)
        return cls(d["passed"], d["delayed"], d["dropped"], d["late_max_us"], tuple(d["late_us"]))

    def late_over(self, us: int) -> tuple[int, ...]:
        """The lateness of every frame held more than ``us`` past its delay."""
        if us < LATE_MARK_US:
            raise ValueError(f"late_over({us}): the relay lists lateness above {LATE_MARK_US} us only")
        return tuple(t for t in self.late_us if t > us)


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # Each frame comes with its virtio_net_hdr, handed back unchanged when it is sent on:
    # a frame whose checksum the sender left to offload (CHECKSUM_PARTIAL, as veths do)
    # keeps that state instead of arriving with a checksum that was never filled in.
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


class _Stop(Exception):
    """SIGTERM: leave the loop (a flag would not do: select() resumes after a handler)."""


def relay(a: str, b: str, delayed: str, delay: float, lifetime: float, max_held: int) -> dict[str, object]:
    sa, sb = _open(a), _open(b)
    stats = {"passed": 0, "delayed": 0, "dropped": 0, "late_max_us": 0}
    late: list[int] = []
    try:  # a wire's delay should not depend on the machine's load: real-time, if allowed
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        pass

    def _term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, _term)
    print("ready", flush=True)
    try:
        _loop(sa, sb, sa if delayed == a else sb, delay, time.monotonic() + lifetime, max_held, stats, late)
    except _Stop:
        pass
    finally:
        sa.close()
        sb.close()
    return {**stats, "late_us": late}


def _loop(
    sa: socket.socket,
    sb: socket.socket,
    hold_from: socket.socket,
    delay: float,
    end: float,
    max_held: int,
    stats: dict[str, int],
    late: list[int],
) -> None:
    peer = {sa: sb, sb: sa}
    held: list[tuple[float, int, socket.socket, bytes]] = []  # (due, order, out, frame)
    seq = 0

    def _send(out: socket.socket, frame: bytes) -> None:
        try:
            out.send(frame)
        except OSError:  # e.g. the interface went away: counted, the relay goes on
            stats["dropped"] += 1

    while True:
        now = time.monotonic()
        if now >= end:
            return
        timeout = end - now
        if held:
            timeout = min(timeout, max(0.0, held[0][0] - now))
        ready, _, _ = select.select([sa, sb], [], [], timeout)
        for s in ready:
            while True:
                try:
                    frame, addr = s.recvfrom(1 << 17)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                if s is not hold_from:
                    _send(peer[s], frame)
                    stats["passed"] += 1
                elif len(held) >= max_held:
                    stats["dropped"] += 1
                else:
                    seq += 1
                    heapq.heappush(held, (time.monotonic() + delay, seq, peer[s], frame))
                    stats["delayed"] += 1
        now = time.monotonic()
        while held and held[0][0] <= now:
            due, _, out, frame = heapq.heappop(held)
            _send(out, frame)
            us = int((now - due) * 1e6)
            stats["late_max_us"] = max(stats["late_max_us"], us)
            if us > LATE_MARK_US and len(late) < max_held:
                late.append(us)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otel_podnet.simnode.delay")
    p.add_argument("--a", required=True, help="one interface")
    p.add_argument("--b", required=True, help="the other interface")
    p.add_argument("--delayed", required=True, help="frames arriving on this interface are held")
    p.add_argument("--delay", type=float, required=True, help="seconds")
    p.add_argument("--lifetime", type=float, default=600.0, help="seconds before the relay exits")
    p.add_argument("--max-held", type=int, default=10_000)
    a = p.parse_args(argv)
    if a.delayed not in (a.a, a.b):
        print(f"--delayed {a.delayed!r}: expected {a.a!r} or {a.b!r}", file=sys.stderr)
        return 2
    print(json.dumps(relay(a.a, a.b, a.delayed, a.delay, a.lifetime, a.max_held)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
