"""Benchmark: what the agent costs the pods it watches, side by side in one run.

On one simulated node (two pods, network namespaces on a bridge, offloads on), three modes
in alternating rounds, so all of them see the same machine:

- ``none``: no programs;
- ``floor``: programs that do nothing on the same hooks (bench/baseline.bpf.c): what the
  hooks themselves cost;
- ``agent``: ``otel-podnet run --exporter none`` as its own process (pods file), its user
  space included.

Per round and mode: the short-connection rate of ``wrk`` (``Connection: close``, one
connection per request) against ``nginx`` in the other pod, then ``iperf3`` throughput.
Printed: medians with the spread, each mode's ratio to ``none``.

Then, with BPF run-time statistics on (``BPF_ENABLE_STATS``: a file descriptor held while
measuring, so other users of the shared sysctl are not disturbed), the same two workloads
for ``floor`` and ``agent`` in alternating rounds: ns per run of each program, keyed by the
program ids the measured process holds (other agents on a shared machine load programs of
the same names), net of the floor on the same hook.

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
from otel_podnet.libbpf import BpfObject, lib
from otel_podnet.simnode import SimNode, SimPod

HERE = Path(__file__).resolve().parent
MODES = ("none", "floor", "agent")
# hook -> (the floor's program, the agent's programs on that hook)
HOOKS = {
    "ingress": ("podnet_base_in", ("podnet_ingress",)),
    "egress": ("podnet_base_eg", ("podnet_egress",)),
    "state": ("podnet_base_st", ("podnet_state",)),
}
BPF_STATS_RUN_TIME = 0


def baseline_object(tmp: Path) -> Path:
    """bench/baseline.bpf.c compiled with the project's flags."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("podnet_bpf_build", HERE.parent / "bpf" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out: Path = build.compile_bpf(tmp / "baseline.bpf.o", HERE / "baseline.bpf.c")
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


class Floor:
    """The empty programs, loaded and attached by this process."""

    def __init__(self, obj_path: Path, root: Path) -> None:
        self.obj = BpfObject(str(obj_path))
        self.obj.load()
        for prog in ("podnet_base_in", "podnet_base_eg"):
            self.obj.attach_cgroup(prog, str(root))
        self.obj.attach("podnet_base_st")
        self.pid = os.getpid()

    def close(self) -> None:
        self.obj.close()


class Agent:
    """``otel-podnet run --exporter none`` in its own process, ready once it has attached."""

    def __init__(self, root: Path, pods: Path, node: str, log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "otel_podnet", "run", "--exporter", "none", "--pods-file", str(pods)),
                *("--node-name", node, "--cgroup-root", str(root), "--interval", "10"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=HERE.parent,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
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
    return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9


def spread(xs: list[float]) -> str:
    return f"{min(xs):,.{2 if max(xs) < 100 else 0}f}..{max(xs):,.{2 if max(xs) < 100 else 0}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the rate comparison")
    p.add_argument("--stats-rounds", type=int, default=3, help="alternating rounds with bpf_stats on")
    p.add_argument("--seconds", type=int, default=5, help="per workload and round")
    a = p.parse_args()
    for tool in ("wrk", "nginx", "iperf3", "bpftool"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} not found (make bench installs wrk, nginx-light, iperf3, bpftool)")
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
        base_obj = baseline_object(tmp)
        port = 8080
        nginx = start_nginx(node, server, port, tmp)

        def start(mode: str) -> Floor | Agent | None:
            if mode == "floor":
                return Floor(base_obj, root)
            if mode == "agent":
                return Agent(root, pods, node.name, tmp / "agent.log")
            return None

        iperf_port = 5300
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        gbps: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            wrk(node, client, server, port, 2)  # warm up: caches, the listener's queue
            for r in range(a.rounds):
                for mode in MODES[r % 3 :] + MODES[: r % 3]:  # rotate: no mode always goes first
                    running = start(mode)
                    try:
                        rates[mode].append(wrk(node, client, server, port, a.seconds))
                        iperf_port += 1
                        gbps[mode].append(iperf(node, client, server, iperf_port, a.seconds))
                    finally:
                        if running:
                            running.close()
                print(
                    f"round {r + 1}: "
                    + "  ".join(f"{m} {rates[m][-1]:,.0f}/s {gbps[m][-1]:.2f} Gbit/s" for m in MODES),
                    flush=True,
                )

            # ns per run, with statistics on, keyed by the measured process's program ids
            per_run: dict[str, dict[str, dict[str, list[float]]]] = {"wrk": {}, "iperf3": {}}
            runs_per: dict[str, dict[str, list[float]]] = {"wrk": {}, "iperf3": {}}
            ns_per: dict[str, list[float]] = {}  # program -> ns per wrk connection (its runs)
            for r in range(a.stats_rounds):
                for mode in ("floor", "agent") if r % 2 == 0 else ("agent", "floor"):
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
                            for i, (name, ns, cnt) in after.items():
                                if i in before and cnt > before[i][2]:
                                    avg = (ns - before[i][1]) / (cnt - before[i][2])
                                    per_run[load].setdefault(mode, {}).setdefault(name, []).append(avg)
                                    if load == "wrk" and rate:
                                        conns = rate * a.seconds
                                        runs_per[load].setdefault(name, []).append((cnt - before[i][2]) / conns)
                                        ns_per[name] = [*ns_per.get(name, []), (ns - before[i][1]) / conns]
                    finally:
                        running.close()
        finally:
            nginx.terminate()
            nginx.wait(10)

    med = {m: statistics.median(rates[m]) for m in MODES}
    gmed = {m: statistics.median(gbps[m]) for m in MODES}
    print(f"\nside by side, {a.rounds} rotating rounds of {a.seconds} s (medians, range):")
    print(
        f"  {'mode':<8} {'wrk connections/s':>18} {'ratio':>6}  {'range':<15} {'iperf3 Gbit/s':>14} {'ratio':>6}  range"
    )
    for m in MODES:
        print(
            f"  {m:<8} {med[m]:>18,.0f} {med[m] / med['none']:>6.3f}  {spread(rates[m]):<15} "
            f"{gmed[m]:>14.2f} {gmed[m] / gmed['none']:>6.3f}  {spread(gbps[m])}"
        )
    for load in ("wrk", "iperf3"):
        print(f"\nBPF ns per run during {load} (bpf_stats, median of {a.stats_rounds} rounds), net of the floor:")
        for hook, (floor_name, progs) in HOOKS.items():
            floor = statistics.median(per_run[load].get("floor", {}).get(floor_name, [0.0]))
            for name in progs:
                xs = per_run[load].get("agent", {}).get(name)
                if not xs:
                    continue
                agent = statistics.median(xs)
                extra = ""
                if load == "wrk" and runs_per[load].get(name):
                    net_conn = statistics.median(ns_per[name]) - statistics.median(ns_per.get(floor_name, [0.0]))
                    extra = (
                        f"   runs per connection {statistics.median(runs_per[load][name]):5.2f}"
                        f"   net ns per connection {net_conn:6.0f}"
                    )
                print(
                    f"  {hook:<8} floor {floor:6.1f}   {name:<15} {agent:6.1f} ({spread(xs)})"
                    f"   net {agent - floor:6.1f}{extra}"
                )


if __name__ == "__main__":
    main()
