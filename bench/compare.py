"""Benchmark: two builds of the agent side by side (before and after a change), and no agent.

``bench/run.py`` compares the agent with no agent; on a shared, noisy machine the ratio it
prints moves by tens of points between runs, more than a change costs. This script puts
both builds in one run, rotating no agent / before / after round by round on the same
simulated node, and reports medians:

1. the short-connection rate (the cost per connection: the state tracepoint), and
2. the average run time of each of the agent's own BPF programs (bpf_stats, counted only
   for the program ids that agent loaded: other agents on the machine load programs with
   the same names).

Each build runs as its own process with its own tree on PYTHONPATH (the ABI may differ).
Run as root: ``PYTHONPATH=$PWD python3 bench/compare.py --before /tmp/main-tree``
where /tmp/main-tree holds the other build (``git archive main | tar -x``, then
``python3 bpf/build.py`` in it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.simnode import SimNode, SimPod, unwind_on_sigterm

AGENT = """
import sys
from pathlib import Path
from otel_podnet.core import Core
from otel_podnet.inventory import PodsFileSource
core = Core(Path(sys.argv[1]), PodsFileSource(Path(sys.argv[2]), sys.argv[3]))
core.start()
print("ready", flush=True)
sys.stdin.read()
core.close()
"""


def podnet_progs() -> dict[int, tuple[str, int, int]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {
        int(p["id"]): (p["name"], int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
        for p in json.loads(out)
        if p.get("name", "").startswith("podnet_")
    }


def short_conns(node: SimNode, a: SimPod, b: SimPod, port: int, n: int) -> float:
    srv = node.workload(b, "tcp-server", addr=b.ip4, port=port, count=n, recv=1, send=1)
    node.wait_ready(srv)
    t0 = time.perf_counter()
    node.result(node.workload(a, "tcp-client", addr=b.ip4, port=port, count=n, send=1, recv=1), timeout=300)
    dt = time.perf_counter() - t0
    node.result(srv)
    return n / dt


def main() -> None:
    unwind_on_sigterm()  # killed, it still removes its simulated node
    p = argparse.ArgumentParser()
    p.add_argument("--before", type=Path, required=True, help="a source tree with its BPF object built")
    p.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--connections", type=int, default=2000)
    a = p.parse_args()
    root = find_cgroup2_mount()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = sysctl.read_text().strip()
    rates: dict[str, list[float]] = {"off": [], "before": [], "after": []}
    prog_ns: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    per_conn: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}  # ns per connection
    with SimNode(root) as node, tempfile.TemporaryDirectory() as tmp:
        pa, pb = node.add_pod("a"), node.add_pod("b")
        pods = Path(tmp) / "pods.yaml"
        node.write_pod_list(pods)
        port = 9500
        order = ["off", "before", "after"]
        try:
            for r in range(a.rounds):
                for label in order[r % 3 :] + order[: r % 3]:  # rotate: no build always goes first
                    proc = None
                    known = set(podnet_progs())
                    if label != "off":
                        env = {**os.environ, "PYTHONPATH": str(trees[label])}
                        env.pop("PODNET_BPF_OBJECT", None)
                        proc = subprocess.Popen(
                            [sys.executable, "-c", AGENT, str(root), str(pods), node.name],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            text=True,
                            cwd=trees[label],
                            env=env,
                        )
                        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                    try:
                        sysctl.write_text("1")
                        mine = {i: v for i, v in podnet_progs().items() if i not in known}
                        port += 1
                        rates[label].append(short_conns(node, pa, pb, port, a.connections))
                        after = podnet_progs()
                        for i, (name, ns0, cnt0) in mine.items():
                            if i in after and after[i][2] > cnt0:
                                avg = (after[i][1] - ns0) / (after[i][2] - cnt0)
                                prog_ns[label].setdefault(name, []).append(avg)
                                total = (after[i][1] - ns0) / a.connections
                                per_conn[label].setdefault(name, []).append(total)
                    finally:
                        sysctl.write_text(old)
                        if proc is not None:
                            proc.communicate(input="", timeout=60)
        finally:
            sysctl.write_text(old)
    off = statistics.median(rates["off"])
    print(f"\nshort connections/s, median of {a.rounds} rotating rounds ({a.connections} connections each):")
    for label in ("off", "before", "after"):
        med = statistics.median(rates[label])
        spread = f"{min(rates[label]):.0f}..{max(rates[label]):.0f}"
        print(f"  {label:<7} {med:8.0f}   ratio to off {med / off:.3f}   (range {spread})")
    print("\nBPF run time (bpf_stats, this agent's programs only), medians: ns per run | ns per connection")
    for name in sorted(set(prog_ns["before"]) | set(prog_ns["after"])):
        b = statistics.median(prog_ns["before"].get(name, [0.0]))
        f = statistics.median(prog_ns["after"].get(name, [0.0]))
        bc = statistics.median(per_conn["before"].get(name, [0.0]))
        fc = statistics.median(per_conn["after"].get(name, [0.0]))
        print(f"  {name:<16} before {b:7.1f} | {bc:7.0f}   after {f:7.1f} | {fc:7.0f}")


if __name__ == "__main__":
    main()
