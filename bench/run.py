"""Benchmark: what the agent costs the pods it watches, side by side in one run.

On one simulated node (two pods, network namespaces on a bridge, offloads on), these modes
in rotating rounds, so all of them see the same machine:

- ``none``: no programs;
- ``floor``: the agent with every program cut to ``return`` at its first line (podnet.bpf.c
  built with ``-DPODNET_CUT=1``): the same hooks, the same user space; what the hooks cost;
- ``storage``: the programs stop once they hold the socket's storage (``-DPODNET_CUT=2``):
  what the per-socket storage costs (its allocation, lookups and freeing);
- ``nostorage``: no socket storage at all (``-DPODNET_CUT=3``): the least a design without it
  would do, the pod from the cgroup and the slot's counters per packet and counted state
  change (podnet.bpf.c, nostorage_skb and nostorage_state);
- ``agent``: ``otel-podnet run --exporter none`` as its own process (pods file), the
  shipped object;
- any ``--object NAME=PATH``: the agent with another build (a branch, an ablation).

Per round and mode: the short-connection rate of ``wrk`` (``Connection: close``, one
connection per request) against ``nginx`` in the other pod, then ``iperf3`` throughput.
Printed: medians with the spread, each mode's ratio to ``none``; and the machine's busy CPU
time (/proc/stat: user, system, interrupts; idle and steal left out) per wrk connection and
per Gbit of iperf3, which shows what the agent adds even where the workload leaves CPU idle
and moves less than the rates from round to round.

Then, with BPF run-time statistics on (``BPF_ENABLE_STATS``: a file descriptor held while
measuring, so other users of the shared sysctl are not disturbed), the same two workloads
for every mode but ``none`` in rotating rounds: ns per hook event (all of the mode's programs
on the hook: the state tracepoint has two), keyed by the program ids the measured process
holds (other agents on a shared machine load programs of the same names), net of the floor.

Run as root: ``python3 bench/run.py`` (or ``make bench``, which installs wrk, nginx-light
and iperf3). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.libbpf import lib
from otel_podnet.simnode import SimNode, SimPod, unwind_on_sigterm

HERE = Path(__file__).resolve().parent
# ablations: the agent's own object built with -DPODNET_CUT=n (see podnet.bpf.c)
CUTS = {"floor": 1, "storage": 2, "nostorage": 3}
# hook -> the agent's programs on it; the first one's runs are the hook's events
HOOKS = {
    "ingress": ("podnet_ingress",),
    "egress": ("podnet_egress",),
    "state": ("podnet_state", "podnet_state2"),
}
BPF_STATS_RUN_TIME = 0


def cut_object(tmp: Path, cut: int) -> Path:
    """bpf/podnet.bpf.c built with the project's flags and -DPODNET_CUT=cut."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("podnet_bpf_build", HERE.parent / "bpf" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out: Path = build.compile_bpf(tmp / f"podnet-cut{cut}.bpf.o", defines=(f"PODNET_CUT={cut}",))
    return out


# -- BPF statistics of one process's programs ------------------------------------------------


def prog_ids_of(pid: int) -> set[int]:
    """The ids of the BPF programs process ``pid`` holds open (from its fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            m = re.search(r"^prog_id:\s+(\d+)", Path(f"/proc/{pid}/fdinfo/{fd}").read_text(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return ids


def prog_stats(ids: set[int]) -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_time_ns, run_cnt) of the given programs."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {
        int(p["id"]): (p.get("name", ""), int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
        for p in json.loads(out)
        if int(p["id"]) in ids
    }


@contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """Run-time statistics on while the fd is held (refcounted in the kernel, unlike the
    kernel.bpf_stats_enabled sysctl, which other engineers' runs may also set)."""
    f = lib().bpf_enable_stats
    f.restype, f.argtypes = ctypes.c_int, [ctypes.c_int]
    fd = f(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise OSError(-fd, "BPF_ENABLE_STATS")
    try:
        yield
    finally:
        os.close(fd)


# -- the modes ---------------------------------------------------------------------------------


class Agent:
    """``otel-podnet run --exporter none`` in its own process, ready once it has attached."""

    def __init__(self, root: Path, pods: Path, node: str, log: Path, obj: Path | None = None) -> None:
        self._log = log.open("w")
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        if obj is not None:
            env["PODNET_BPF_OBJECT"] = str(obj)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "otel_podnet", "run", "--exporter", "none", "--pods-file", str(pods)),
                *("--node-name", node, "--cgroup-root", str(root), "--interval", "10"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=HERE.parent,
            env=env,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while "attached" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the agent did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- the workloads -----------------------------------------------------------------------------

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {addr}:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def start_nginx(node: SimNode, pod: SimPod, port: int, tmp: Path) -> subprocess.Popen[str]:
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, addr=pod.ip4, port=port))
    proc = node.spawn(pod, ["nginx", "-p", str(tmp), "-c", str(conf)])
    for _ in range(100):  # until it listens
        r = subprocess.run(
            ["ip", "netns", "exec", pod.netns, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
        )
        if r.stdout.strip():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nginx did not start: {(tmp / 'nginx-error.log').read_text()}")


def wrk(node: SimNode, client: SimPod, server: SimPod, port: int, seconds: int) -> float:
    """Requests (= connections, ``Connection: close``) per second."""
    out = node.spawn(
        client,
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-H", "Connection: close", f"http://{server.ip4}:{port}/"],
    ).communicate(timeout=seconds + 60)[0]
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no rate: {out}")
    errors = re.search(r"^\s*(Socket errors:.*|Non-2xx.*)$", out, re.M)
    if errors:  # a stall shows here (timeouts), not only as a low rate
        print(f"  wrk: {errors.group(1).strip()}", flush=True)
    return float(m.group(1))


def iperf(node: SimNode, client: SimPod, server: SimPod, port: int, seconds: int) -> float:
    """Gbit/s received."""
    srv = node.spawn(server, ["iperf3", "-s", "-1", "-B", server.ip4, "-p", str(port)])
    time.sleep(0.3)
    out = node.spawn(client, ["iperf3", "-c", server.ip4, "-p", str(port), "-t", str(seconds), "-J"])
    res = json.loads(out.communicate(timeout=seconds + 60)[0])
    srv.communicate(timeout=10)
    if "error" in res:  # iperf3 -J reports its failures in the JSON, with no figures
        raise SystemExit(f"iperf3 {client.ip4} -> {server.ip4}:{port}: {res['error']}")
    return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (user, system, interrupts), all CPUs: idle,
    I/O wait and time stolen by the hypervisor left out (/proc/stat, USER_HZ)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = f[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def spread(xs: list[float]) -> str:
    return f"{min(xs):,.{2 if max(xs) < 100 else 0}f}..{max(xs):,.{2 if max(xs) < 100 else 0}f}"


def main() -> None:
    unwind_on_sigterm()  # killed, it still removes its simulated node
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rounds", type=int, default=7, help="rotating rounds of the rate comparison (0: BPF statistics only)"
    )
    p.add_argument("--stats-rounds", type=int, default=3, help="rotating rounds with bpf_stats on")
    p.add_argument("--seconds", type=int, default=5, help="per workload and round")
    p.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="one more mode: the agent with another build of podnet.bpf.o (a branch, an ablation)",
    )
    p.add_argument(
        "--modes",
        default="",
        metavar="M,M,...",
        help="only these modes (none always runs: the ratios are to it); default: every one",
    )
    a = p.parse_args()
    for tool in ("wrk", "nginx", "iperf3", "bpftool"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} not found (make bench installs wrk, nginx-light, iperf3, bpftool)")
    extra: dict[str, Path] = {}
    for spec in a.object:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file() or name in ("none", "agent", *CUTS):
            raise SystemExit(f"bench: --object {spec!r}: expected NAME=PATH of a built podnet.bpf.o, a new name")
        extra[name] = Path(path)
    modes = ("none", *CUTS, "agent", *extra)
    if a.modes:
        wanted = set(a.modes.split(","))
        unknown = sorted(wanted - set(modes))
        if unknown:
            raise SystemExit(f"bench: --modes: unknown {', '.join(unknown)}; known {', '.join(modes)}")
        modes = tuple(m for m in modes if m == "none" or m in wanted)
    root = find_cgroup2_mount()
    with SimNode(root) as node, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        client, server = node.add_pod("client"), node.add_pod("server")
        # the client opens tens of thousands of connections per round: ports and TIME_WAIT
        node.sysctl(client, "net.ipv4.ip_local_port_range=1024 65000")
        node.sysctl(client, "net.ipv4.tcp_tw_reuse=1")
        node.sysctl(server, "net.core.somaxconn=4096")
        pods = tmp / "pods.yaml"
        node.write_pod_list(pods)
        objects: dict[str, Path | None] = {"agent": None, **extra}
        for mode, cut in CUTS.items():
            if mode in modes:
                objects[mode] = cut_object(tmp, cut)
        port = 8080
        nginx = start_nginx(node, server, port, tmp)

        def start(mode: str) -> Agent | None:
            if mode == "none":
                return None
            return Agent(root, pods, node.name, tmp / "agent.log", objects[mode])

        iperf_port = 5300
        rates: dict[str, list[float]] = {m: [] for m in modes}
        gbps: dict[str, list[float]] = {m: [] for m in modes}
        # busy CPU of the machine per unit of work: what the agent adds even where the
        # workload is not CPU-bound (idle left), and steadier than the rates
        cpu_conn: dict[str, list[float]] = {m: [] for m in modes}  # us per wrk connection
        cpu_gbit: dict[str, list[float]] = {m: [] for m in modes}  # s per Gbit of iperf3
        # load -> mode -> hook -> [ns per event]; wrk: mode -> hook -> [events per connection]
        per_event: dict[str, dict[str, dict[str, list[float]]]] = {"wrk": {}, "iperf3": {}}
        events_per_conn: dict[str, dict[str, list[float]]] = {}
        try:
            wrk(node, client, server, port, 2)  # warm up: caches, the listener's queue
            for r in range(a.rounds):
                k = r % len(modes)
                for mode in modes[k:] + modes[:k]:  # rotate: no mode always goes first
                    running = start(mode)
                    try:
                        t0 = busy_seconds()
                        rates[mode].append(wrk(node, client, server, port, a.seconds))
                        t1 = busy_seconds()
                        iperf_port += 1
                        gbps[mode].append(iperf(node, client, server, iperf_port, a.seconds))
                        t2 = busy_seconds()
                        cpu_conn[mode].append((t1 - t0) / (rates[mode][-1] * a.seconds) * 1e6)
                        cpu_gbit[mode].append((t2 - t1) / (gbps[mode][-1] * a.seconds))
                    finally:
                        if running:
                            running.close()
                print(
                    f"round {r + 1}: "
                    + "  ".join(f"{m} {rates[m][-1]:,.0f}/s {gbps[m][-1]:.2f} Gbit/s" for m in modes),
                    flush=True,
                )

            # ns per hook event, with statistics on, keyed by the measured process's program ids
            measured = modes[1:]
            for r in range(a.stats_rounds):
                k = r % len(measured)
                for mode in measured[k:] + measured[:k]:
                    running = start(mode)
                    assert running is not None
                    try:
                        ids = prog_ids_of(running.pid)
                        for load in ("wrk", "iperf3"):
                            iperf_port += 1
                            with bpf_stats_enabled():
                                before = prog_stats(ids)
                                if load == "wrk":
                                    rate = wrk(node, client, server, port, a.seconds)
                                else:
                                    rate = iperf(node, client, server, iperf_port, a.seconds)
                                after = prog_stats(ids)
                            for hook, progs in HOOKS.items():
                                ns, events = hook_delta(before, after, progs)
                                if not events:
                                    continue
                                per_event[load].setdefault(mode, {}).setdefault(hook, []).append(ns / events)
                                if load == "wrk" and rate:
                                    conns = rate * a.seconds
                                    events_per_conn.setdefault(mode, {}).setdefault(hook, []).append(events / conns)
                    finally:
                        running.close()
        finally:
            nginx.terminate()
            nginx.wait(10)

    if a.rounds:
        print_rates(modes, rates, gbps, a.rounds, a.seconds)
        print_cpu(modes, cpu_conn, cpu_gbit)
    for load in ("wrk", "iperf3"):
        print(
            f"\nBPF ns per hook event during {load} (bpf_stats, all the agent's programs on the hook, "
            f"median of {a.stats_rounds} rounds), net of the floor:"
        )
        for hook in HOOKS:
            floor = statistics.median(per_event[load].get("floor", {}).get(hook, [0.0]))
            line = f"  {hook:<8} floor {floor:6.1f}"
            for mode in measured:
                xs = per_event[load].get(mode, {}).get(hook)
                if mode == "floor" or not xs:
                    continue
                net = statistics.median(xs) - floor
                line += f"   {mode} {statistics.median(xs):6.1f} net {net:6.1f}"
                if load == "wrk" and events_per_conn.get(mode, {}).get(hook):
                    per_conn = statistics.median(events_per_conn[mode][hook])
                    line += f" x {per_conn:5.2f}/conn = {net * per_conn:5.0f} ns"
            print(line)


def paired(xs: dict[str, list[float]], m: str) -> float:
    """The median over rounds of mode ``m``'s figure divided by ``none``'s in the same round:
    the machine drifts between rounds more than within one, and each round has every mode."""
    return statistics.median(x / n for x, n in zip(xs[m], xs["none"], strict=True))


def print_table(
    title: str, modes: tuple[str, ...], columns: tuple[tuple[str, dict[str, list[float]], str], ...]
) -> None:
    print(f"\n{title}")
    print("  " + f"{'mode':<9}" + "".join(f" {head:>18} {'ratio':>6}  {'range':<16}" for head, _, _ in columns))
    for m in modes:
        line = f"  {m:<9}"
        for _, xs, fmt in columns:
            line += f" {format(statistics.median(xs[m]), fmt):>18} {paired(xs, m):>6.3f}  {spread(xs[m]):<16}"
        print(line)


def print_rates(
    modes: tuple[str, ...], rates: dict[str, list[float]], gbps: dict[str, list[float]], rounds: int, seconds: int
) -> None:
    print_table(
        f"side by side, {rounds} rotating rounds of {seconds} s (medians; ratio: median of each round's to none):",
        modes,
        (("wrk connections/s", rates, ",.0f"), ("iperf3 Gbit/s", gbps, ".2f")),
    )


def print_cpu(modes: tuple[str, ...], cpu_conn: dict[str, list[float]], cpu_gbit: dict[str, list[float]]) -> None:
    ms_gbit = {m: [x * 1000 for x in xs] for m, xs in cpu_gbit.items()}
    print_table(
        "busy CPU of the machine per unit of work (medians; ratio as above, lower is better):",
        modes,
        (("us per connection", cpu_conn, ".1f"), ("ms per Gbit", ms_gbit, ".1f")),
    )


def hook_delta(
    before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]], progs: tuple[str, ...]
) -> tuple[int, int]:
    """(run time of every program of ``progs``, runs of the first one: the hook's events)."""
    ns = events = 0
    for i, (name, t, cnt) in after.items():
        if name in progs and i in before:
            ns += t - before[i][1]
            if name == progs[0]:
                events += cnt - before[i][2]
    return ns, events


if __name__ == "__main__":
    main()
