"""CPU and memory of the whole agent process on a node of N pods (default 110, kubelet's
default maxPods), with its exporters: what an operator sees in ``kubectl top``.

    PYTHONPATH=$PWD python3 bench/agent_cpu.py [--pods 110] [--intervals 12] [--mode otlp --mode prometheus]

It builds a simulated node of N pods (network namespaces on a bridge, kubelet-named cgroups)
and keeps every pod's series live: one helper process holds, for each pod, a UDP socket
towards the node and a TCP connection to the next pod (a ring), each created inside the
pod's network namespace and cgroup, and every interval sends one datagram and one
request/response of 100 bytes each way on every one of them. Then, per mode:

- ``otlp``: the real ``python3 -m otel_podnet run --pods-file ... --interval 10`` with the
  default exporter (OTLP gRPC) to the real OpenTelemetry Collector
  (collector-config/gateway.yaml, as tests/e2e runs it, with a file exporter that writes
  each request it receives as one JSON line);
- ``otlp-http``: the same with ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` to the same
  Collector: beside ``otlp``, what gRPC's own threads cost (its event engine wakes up on
  timers of its own, connected or not);
- ``prometheus``: the same process with ``--exporter prometheus`` only, its ``/metrics``
  fetched every interval over HTTP as Prometheus does (its Accept header).

After a warm-up (``--warmup`` intervals) it reads ``/proc/PID/stat`` (utime + stime, every
thread of the process) at mid-interval, again ``--intervals`` intervals later, and prints:
% of one core, CPU ms per interval, the agent's own ``podnet.agent.collection.duration``
(from what the Collector received, or from the scrape), VmRSS and VmHWM, and the data points
per request (this node's pods, the node Resource, and other pods the agent sees by cgroup:
on this shared machine other simulated nodes' pods are reported too).

``--profile DIR`` runs the agent under ``python3 -m cProfile -o DIR/MODE.prof`` (its main thread
only); ``--py-spy DIR`` samples every thread with py-spy (``pip install py-spy``) while
measuring, into DIR/MODE.txt (collapsed stacks); ``--tree DIR``
runs the agent of another checkout (with its built BPF object), e.g. main for a before/after.

Numbers are printed, never asserted (bench/, not tests/).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otel_podnet.cgroups import find_cgroup2_mount  # noqa: E402
from otel_podnet.simnode import SimNode, SimPod, unwind_on_sigterm  # noqa: E402
from tests.e2e import otlp_json  # noqa: E402
from tests.e2e.collector import build_otelcol, free_port  # noqa: E402
from tests.e2e.conftest import gateway  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
CLONE_NEWNET = 0x40000000
PORT = 7700


# -- the traffic helper (a process of its own: it moves itself between cgroups) -----------------


def _enter(netns: str, cgroup: str) -> None:
    """This process into ``cgroup``, this thread into ``netns``: sockets created next
    belong to that pod (cgroup v2 binds a socket to its creator's cgroup at creation; an
    accepted socket takes its listener's)."""
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


def traffic_helper(spec_path: str) -> int:
    """Per pod: a UDP socket to the node and a TCP connection to the next pod; every
    ``period`` seconds one datagram and a 100-byte request/response on each. Until stdin
    closes."""
    spec = json.loads(Path(spec_path).read_text())
    home = spec["home_cgroup"]
    pods = spec["pods"]
    n = len(pods)
    listeners = []
    for p in pods:
        _enter(p["netns"], p["cgroup"])
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((p["ip"], PORT))
        ls.listen(4)
        listeners.append(ls)
    udp, clients, servers = [], [], []
    for i, p in enumerate(pods):
        _enter(p["netns"], p["cgroup"])
        udp.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        clients.append(socket.create_connection((pods[(i + 1) % n]["ip"], PORT), timeout=30))
        servers.append(listeners[(i + 1) % n].accept()[0])
    Path(home, "cgroup.procs").write_text(str(os.getpid()))
    for ls in listeners:
        ls.close()
    print("ready", flush=True)
    msg = b"q" * 100
    node = (spec["node_ip"], 9)  # discard: unconnected, so the node's ICMP port unreachable is no error
    while True:
        for u, c, s in zip(udp, clients, servers, strict=True):
            u.sendto(b"x", node)
            c.sendall(msg)
            _recv_exact(s, 100)
            s.sendall(msg)
            _recv_exact(c, 100)
        r, _, _ = select.select([sys.stdin], [], [], spec["period"])
        if r and not sys.stdin.readline():
            return 0


def _recv_exact(s: socket.socket, n: int) -> None:
    while n:
        b = s.recv(n)
        if not b:
            raise ConnectionError("peer closed")
        n -= len(b)


@contextlib.contextmanager
def traffic(node: SimNode, pods: list[SimPod], period: float, tmp: Path) -> Iterator[None]:
    spec = {
        "home_cgroup": str(node.outside_cgroup),
        "node_ip": node.node_ip4,
        "period": period,
        "pods": [{"netns": p.netns, "cgroup": str(p.cgroup), "ip": p.ip4} for p in pods],
    }
    path = tmp / "traffic.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--traffic-helper", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"traffic helper did not start: {line!r}")
        yield
        if proc.poll() is not None:
            raise RuntimeError(f"traffic helper died (exit {proc.returncode}): the pods' series were not live")
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the agent process ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_of(f"/proc/{pid}/stat")  # utime, stime: every thread, ended ones included


def thread_comms(pid: int) -> dict[int, str]:
    """Thread id -> its name in the kernel (gRPC names its threads; Python's are python3)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    return out


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of the process, in nanoseconds of run time
    (schedstat: the scheduler's own account, finer than the stat ticks)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError):
            out[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    return out


def cpu_seconds_of(stat: str) -> float:
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def agent(
    tree: Path,
    pods_file: Path,
    node_name: str,
    interval: float,
    exporter_args: list[str],
    env: dict[str, str],
    prof: Path | None,
) -> Iterator[subprocess.Popen[str]]:
    health = free_port()
    py = [sys.executable] + (["-m", "cProfile", "-o", str(prof)] if prof else [])
    args = [
        *py,
        "-m",
        "otel_podnet",
        "run",
        "--pods-file",
        str(pods_file),
        "--interval",
        str(interval),
        "--node-name",
        node_name,
        "--health-address",
        f"127.0.0.1:{health}",
        *exporter_args,
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), **env},
    )
    try:
        deadline = time.monotonic() + 120
        while not _ready(health):
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent not ready after 120 s")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def measure(
    proc: subprocess.Popen[str], ready_at: float, interval: float, warmup: int, intervals: int, py_spy: str | None
) -> dict[str, Any]:
    """CPU over ``intervals`` intervals from mid-interval after the warm-up."""
    t0 = ready_at + (warmup + 0.5) * interval
    time.sleep(max(0.0, t0 - time.monotonic()))
    spy = None
    if py_spy:  # samples every thread; its own CPU is its own process's, not the agent's
        argv = ["py-spy", "record", "-p", str(proc.pid), "-r", "250", "-d", str(int(intervals * interval))]
        argv += ["-f", "raw", "-o", py_spy, "--nonblocking", "--threads"]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c0, w0, th0 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
    time.sleep(max(0.0, t0 + intervals * interval - time.monotonic()))
    c1, w1, th1 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
    if spy is not None:
        spy.wait(60)
    mem = status_kib(proc.pid)
    cpu = c1 - c0
    return {
        "cpu_s": cpu,
        "wall_s": w1 - w0,
        "pct": 100 * cpu / (w1 - w0),
        "ms_per_interval": 1000 * cpu / intervals,
        "comms": thread_comms(proc.pid),
        "threads": {tid: 1000 * (c - th0.get(tid, 0.0)) / intervals for tid, c in th1.items()},
        "rss": mem.get("VmRSS", 0),
        "hwm": mem.get("VmHWM", 0),
    }


# -- what the collector / the scraper received ------------------------------------------------------


def request_points(req: dict[str, Any], ours: set[str]) -> dict[str, Any]:
    counts = {"ours": 0, "node": 0, "other": 0}
    resources = {"ours": 0, "node": 0, "other": 0}
    duration = None
    for rm in req.get("resourceMetrics", []):
        res = otlp_json.attrs(rm.get("resource", {}).get("attributes"))
        uid = res.get("k8s.pod.uid")
        kind = "node" if uid is None else "ours" if uid in ours else "other"
        resources[kind] += 1
        for sm in rm.get("scopeMetrics", []):
            for m in sm.get("metrics", []):
                data = m.get("sum") or m.get("gauge") or m.get("histogram") or {}
                dps = data.get("dataPoints", [])
                counts[kind] += len(dps)
                if m["name"] == "podnet.agent.collection.duration" and dps:
                    duration = float(dps[0].get("asDouble", 0))
    return {"points": counts, "resources": resources, "duration": duration}


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` s, as Prometheus does."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.scrapes: list[tuple[float, int, int, float | None]] = []  # seconds, bytes, samples, collection s

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics", headers={"Accept": PROM_ACCEPT})
            t = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    body = r.read().decode()
            except OSError:
                continue
            dt = time.monotonic() - t
            lines = [ln for ln in body.splitlines() if ln and not ln.startswith("#")]
            dur = None
            for ln in lines:
                if ln.startswith("podnet_agent_collection_duration_seconds"):
                    dur = float(ln.rsplit(" ", 1)[1])
            self.scrapes.append((dt, len(body), len(lines), dur))


def thread_names(spy: str | None) -> dict[int, str]:
    """Thread id -> Python thread name, from py-spy's output when there is one."""
    out: dict[int, str] = {}
    if spy and Path(spy).exists():
        for line in Path(spy).read_text().splitlines():
            head = line.split(";", 1)[0]  # thread (TID): NAME
            if head.startswith("thread (") and "): " in head:
                tid, _, name = head[len("thread (") :].partition("): ")
                out[int(tid)] = name.split(" ")[0]
    return out


def _ms(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    ms = sorted(x * 1000 for x in xs)
    return f"min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms"


def run_mode(
    mode: str, node: SimNode, pods: list[SimPod], pods_file: Path, args: argparse.Namespace, tmp: Path
) -> None:
    ours = {p.uid for p in pods}
    tree = Path(args.tree).resolve()
    spy = str(Path(args.py_spy) / f"{mode}.txt") if args.py_spy else None
    prof = Path(args.profile) / f"{mode}.prof" if args.profile else None
    print(f"\n== {mode}: {args.intervals} intervals of {args.interval:g} s after {args.warmup} of warm-up", flush=True)
    if mode in ("otlp", "otlp-http"):
        binary = build_otelcol()
        with gateway(binary, tmp / "col") as col:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint}
            if mode == "otlp-http":
                env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.http_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
            with agent(tree, pods_file, node.name, args.interval, [], env, prof) as proc:
                ready = time.monotonic()
                m = measure(proc, ready, args.interval, args.warmup, args.intervals, spy)
                time.sleep(1.0)
                reqs = otlp_json.requests(col.file)[args.warmup + 1 :]  # the first at start, then the warm-up's
        stats = [request_points(r, ours) for r in reqs]
        print(f"requests the Collector received after the warm-up: {len(reqs)}")
        if stats:
            last = stats[-1]
            print(
                "data points per request (last): "
                f"{sum(last['points'].values())} = this node's {last['resources']['ours']} pods "
                f"{last['points']['ours']} ({last['points']['ours'] / max(1, last['resources']['ours']):.1f} per pod)"
                f" + the node Resource {last['points']['node']}"
                f" + {last['resources']['other']} other pods seen by cgroup {last['points']['other']}"
            )
        durations = [s["duration"] for s in stats if s["duration"] is not None]
        print(f"podnet.agent.collection.duration as received: {_ms(durations)}")
    else:
        port = free_port()
        exp = ["--exporter", "prometheus", "--prometheus-address", f"127.0.0.1:{port}"]
        with agent(tree, pods_file, node.name, args.interval, exp, {}, prof) as proc:
            ready = time.monotonic()
            scraper = Scraper(port, args.interval)
            time.sleep(args.interval / 4)  # scrapes at a quarter past each collection
            scraper.start()
            m = measure(proc, ready, args.interval, args.warmup, args.intervals, spy)
            scraper.stop.set()
        s = scraper.scrapes
        print(f"scrapes: {len(s)}; last: {s[-1][2] if s else 0} samples, {s[-1][1] / 1024 if s else 0:.0f} KiB")
        print(f"scrape time (client side): {_ms([x[0] for x in s])}")
        print(f"podnet.agent.collection.duration as scraped: {_ms([x[3] for x in s if x[3] is not None])}")
    print(
        f"agent CPU: {m['cpu_s'] * 1000:.0f} ms over {m['wall_s']:.1f} s = {m['pct']:.3f} % of one core, "
        f"{m['ms_per_interval']:.1f} ms per interval (utime+stime, all threads, {1000 / CLK_TCK:.0f} ms ticks)"
    )
    busy = sorted(((ms, tid) for tid, ms in m["threads"].items() if ms > 0), reverse=True)
    names = {**m["comms"], **thread_names(spy)}  # Python's threads are all python3 without py-spy
    print(
        "  per thread (schedstat run time), ms per interval: "
        + ", ".join(f"{names.get(tid, '?')}/{tid} {ms:.1f}" for ms, tid in busy)
        + f" ({len(m['threads'])} threads)"
    )
    print(f"agent memory: VmRSS {m['rss'] / 1024:.1f} MiB, VmHWM {m['hwm'] / 1024:.1f} MiB", flush=True)


def main() -> int:
    unwind_on_sigterm()  # killed, it still removes its simulated node
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--intervals", type=int, default=12, help="measured intervals per mode")
    p.add_argument("--warmup", type=int, default=2, help="intervals before the measurement")
    p.add_argument(
        "--mode", action="append", choices=["otlp", "otlp-http", "prometheus"], help="default: otlp and prometheus"
    )
    p.add_argument("--profile", metavar="DIR", help="run the agent under cProfile, DIR/MODE.prof")
    p.add_argument("--py-spy", metavar="DIR", help="py-spy record (every thread) while measuring: DIR/MODE.txt")
    p.add_argument("--tree", default=str(REPO), help="the checkout whose agent runs (default: this one)")
    p.add_argument("--traffic-helper", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.traffic_helper:
        return traffic_helper(args.traffic_helper)

    print(f"agent from {Path(args.tree).resolve()}", flush=True)
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    with SimNode(find_cgroup2_mount()) as node, tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        t0 = time.monotonic()
        pods = [node.add_pod(f"pod-{i}", driver="systemd" if i % 2 else "cgroupfs") for i in range(args.pods)]
        print(f"{len(pods)} pods built in {time.monotonic() - t0:.0f} s", flush=True)
        pods_file = tmp / "pods.yaml"
        node.write_pod_list(pods_file)
        with traffic(node, pods, args.interval, tmp):
            for mode in args.mode or ["otlp", "prometheus"]:
                run_mode(mode, node, pods, pods_file, args, tmp)
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
