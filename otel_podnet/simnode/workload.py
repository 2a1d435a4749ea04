"""Workloads that run inside simulated pods: ``python -m otel_podnet.simnode.workload MODE ...``.

Each prints one JSON line with what it did (the ground truth), after a ``ready`` line for
servers. They use plain sockets so the figures are exactly what the applications wrote.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import threading
import time


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _recv_exact(conn: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        chunk = conn.recv(min(1 << 20, n - got))
        if not chunk:
            break
        got += len(chunk)
    return got


def _listen(a: argparse.Namespace) -> socket.socket:
    """A listening TCP socket on --addr/--port; says ``ready`` once it listens."""
    srv = socket.socket(_family(a.addr), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.addr, a.port))
    srv.listen(4096)
    print("ready", flush=True)
    return srv


def _pace(a: argparse.Namespace, start: float, i: int) -> None:
    """With --pace S, attempt i starts S*i seconds after the first (a steady rate of 1/S)."""
    if a.pace:
        delay = start + i * a.pace - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def tcp_server(a: argparse.Namespace) -> dict[str, int]:
    srv = _listen(a)
    totals = {"accepted": 0, "received": 0, "sent": 0}
    lock = threading.Lock()
    threads = []

    def serve(conn: socket.socket) -> None:
        got = _recv_exact(conn, a.recv)
        if a.send:
            conn.sendall(b"r" * a.send)
        if not a.close_first:
            while conn.recv(65536):  # wait for the peer's close
                pass
        # With --close-first, a bare close() as soon as the reply is written: the kernel
        # orphans the socket, and once our FIN is acknowledged it becomes a timewait
        # mini-socket in FIN_WAIT2, which takes the peer's FIN and acknowledges it.
        conn.close()
        with lock:
            totals["received"] += got
            totals["sent"] += a.send

    if a.count == 0:  # until killed: the totals so far after every connection it served
        while True:  # (and the address that connection came from)
            conn, remote = srv.accept()
            totals["accepted"] += 1
            serve(conn)
            print(json.dumps({**totals, "remote": remote[0]}), flush=True)
    for _ in range(a.count):
        conn, _ = srv.accept()
        totals["accepted"] += 1
        if a.count > 200:  # many short connections: serve inline
            serve(conn)
        else:
            t = threading.Thread(target=serve, args=(conn,))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    srv.close()
    return totals


def tcp_client(a: argparse.Namespace) -> dict[str, int]:
    totals = {"connected": 0, "sent": 0, "received": 0}
    payload = b"s" * a.send
    start = time.monotonic()
    for i in range(a.count):
        _pace(a, start, i)
        c = socket.create_connection((a.addr, a.port), timeout=30)
        totals["connected"] += 1
        if payload:
            c.sendall(payload)
        totals["sent"] += len(payload)
        totals["received"] += _recv_exact(c, a.recv)
        if a.pause_ms:  # let a peer that closed first have its FIN acknowledged on its own
            time.sleep(a.pause_ms / 1000)
        # A graceful close: our FIN, then the peer's, while the socket is still ours. (A
        # bare close() orphans the socket; the kernel then turns it into a timewait
        # mini-socket in FIN_WAIT2, and the peer's FIN reaches no full socket.)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
        c.close()
    return totals


def connect_fail(a: argparse.Namespace) -> dict[str, int]:
    out: dict[str, int] = {}
    start = time.monotonic()
    for i in range(a.count):
        _pace(a, start, i)
        s = socket.socket(_family(a.addr), socket.SOCK_STREAM)
        try:
            s.connect((a.addr, a.port))
            out["connected"] = out.get("connected", 0) + 1
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            out[name] = out.get(name, 0) + 1
        finally:
            s.close()
    return out


def udp_send(a: argparse.Namespace) -> dict[str, int]:
    s = socket.socket(_family(a.addr), socket.SOCK_DGRAM)
    data = b"u" * a.size
    for i in range(a.count):
        s.sendto(data, (a.addr, a.port))
        if i % 50 == 49:
            time.sleep(0.001)
    return {"sent": a.count, "bytes": a.count * a.size}


def udp_recv(a: argparse.Namespace) -> dict[str, int]:
    s = socket.socket(_family(a.addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: no drops in the queue
    s.bind((a.addr, a.port))
    # The sender is another process, started after "ready": on a loaded machine (or a
    # guest under TCG) starting it takes seconds, so the first datagram may wait as long
    # as the caller waits for the result; once they flow, 10 s of silence ends the count.
    s.settimeout(110)
    print("ready", flush=True)
    got = nbytes = 0
    try:
        while got < a.count:
            nbytes += len(s.recv(65536))
            got += 1
            s.settimeout(10)
    except TimeoutError:
        pass
    return {"received": got, "bytes": nbytes}


def hold(a: argparse.Namespace) -> dict[str, int]:
    """Open ``count`` connections, say ``ready``, then on each stdin line ``send`` send
    ``size`` bytes on each and read as many back (an echo server), and on ``close`` close all."""
    conns = [socket.create_connection((a.addr, a.port), timeout=30) for _ in range(a.count)]
    print("ready", flush=True)
    sent = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "send":
            for c in conns:
                c.sendall(b"h" * a.size)
                _recv_exact(c, a.size)
                sent += a.size
            print("sent", flush=True)
        elif cmd == "close":
            break
    for c in conns:
        c.close()
    return {"held": len(conns), "sent": sent}


def echo_server(a: argparse.Namespace) -> dict[str, int]:
    srv = _listen(a)
    threads = []

    def serve(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)
        conn.close()

    for _ in range(a.count):
        conn, _ = srv.accept()
        t = threading.Thread(target=serve, args=(conn,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return {"accepted": a.count}


MODES = {
    "tcp-server": tcp_server,
    "tcp-client": tcp_client,
    "connect-fail": connect_fail,
    "udp-send": udp_send,
    "udp-recv": udp_recv,
    "hold": hold,
    "echo-server": echo_server,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otel_podnet.simnode.workload")
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1, help="tcp-server: 0 serves until killed")
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--recv", type=int, default=0)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--pace", type=float, default=0.0, help="tcp-client, connect-fail: seconds between attempts")
    p.add_argument("--close-first", type=int, default=0, help="tcp-server: close before the peer does")
    p.add_argument("--pause-ms", type=int, default=0, help="tcp-client: wait before closing")
    a = p.parse_args(argv)
    print(json.dumps(MODES[a.mode](a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
