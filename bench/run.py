"""Benchmark: the cost of the datapath, measured side by side in one run.

1. Average run time per BPF program (kernel.bpf_stats_enabled) during the 50-connection
   transfer of the acceptance test (50 x 1,000,000 bytes up, 10,000 down).
2. Short-connection rate and bulk throughput between two simulated pods, without the
   agent and with it, alternating rounds so both see the same machine; the ratio matters.

Run as root: ``python3 bench/run.py`` (or ``make bench``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.core import Core
from otel_podnet.inventory import PodsFileSource
from otel_podnet.simnode import SimNode, SimPod


def prog_stats() -> dict[str, tuple[int, int]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {
        p["name"]: (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
        for p in json.loads(out)
        if p.get("name", "").startswith("podnet_")
    }


def baseline_object(tmp: Path) -> Path:
    """bench/baseline.bpf.c compiled with the project's flags."""
    import importlib.util

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("podnet_bpf_build", here.parent / "bpf" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out: Path = build.compile_bpf(tmp / "baseline.bpf.o", here / "baseline.bpf.c")
    return out


def run_times(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, float]]:
    out = {}
    for name in sorted(after):
        ns = after[name][0] - before.get(name, (0, 0))[0]
        cnt = after[name][1] - before.get(name, (0, 0))[1]
        out[name] = (cnt, ns / cnt if cnt else 0.0)
    return out


def transfer(node: SimNode, a: SimPod, b: SimPod, port: int) -> None:
    srv = node.workload(b, "tcp-server", addr=b.ip4, port=port, count=50, recv=1_000_000, send=10_000)
    node.wait_ready(srv)
    node.result(node.workload(a, "tcp-client", addr=b.ip4, port=port, count=50, send=1_000_000, recv=10_000))
    node.result(srv)


def short_conns(node: SimNode, a: SimPod, b: SimPod, port: int, n: int = 3000) -> float:
    srv = node.workload(b, "tcp-server", addr=b.ip4, port=port, count=n, recv=1, send=1)
    node.wait_ready(srv)
    t0 = time.perf_counter()
    node.result(node.workload(a, "tcp-client", addr=b.ip4, port=port, count=n, send=1, recv=1), timeout=300)
    dt = time.perf_counter() - t0
    node.result(srv)
    return n / dt


def iperf(node: SimNode, a: SimPod, b: SimPod, port: int) -> float:
    srv = node.spawn(b, ["iperf3", "-s", "-1", "-B", b.ip4, "-p", str(port)])
    time.sleep(0.3)
    out = node.spawn(a, ["iperf3", "-c", b.ip4, "-p", str(port), "-t", "3", "-J"])
    res = json.loads(out.communicate(timeout=60)[0])
    srv.communicate(timeout=10)
    return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9


def main() -> None:
    root = find_cgroup2_mount()
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = sysctl.read_text().strip()
    with SimNode(root) as node, tempfile.TemporaryDirectory() as tmp:
        a, b = node.add_pod("a"), node.add_pod("b")
        pods = Path(tmp) / "pods.yaml"
        node.write_pod_list(pods)
        port = 9000

        from otel_podnet.libbpf import BpfObject

        base_obj = baseline_object(Path(tmp))
        for offloads in (True, False):
            for pod in (a, b):
                node.set_offloads(pod, offloads)
            runs: dict[str, dict[str, list[tuple[int, float]]]] = {}
            for _ in range(3):  # alternating rounds; the median of each program's average
                for label in ("baseline (empty programs)", "otel-podnet"):
                    if label.startswith("baseline"):
                        base = BpfObject(str(base_obj))
                        base.load()
                        for prog in ("podnet_base_in", "podnet_base_eg"):
                            base.attach_cgroup(prog, str(root))
                        base.attach("podnet_base_st")
                        stop = base.close
                    else:
                        core = Core(root, PodsFileSource(pods, node.name))
                        core.start()
                        stop = core.close
                    try:
                        sysctl.write_text("1")
                        before = prog_stats()
                        port += 1
                        transfer(node, a, b, port)
                        for name, fig in run_times(before, prog_stats()).items():
                            runs.setdefault(label, {}).setdefault(name, []).append(fig)
                    finally:
                        sysctl.write_text(old)
                        stop()
            figures = {
                label: {name: (figs[0][0], statistics.median(f[1] for f in figs)) for name, figs in progs.items()}
                for label, progs in runs.items()
            }
            state = "on" if offloads else "off"
            print(
                f"\nBPF run time (bpf_stats, median of 3) during 50 x (1,000,000 up + 10,000 down), offloads {state}:"
            )
            for label, progs in figures.items():
                for name, (cnt, avg) in progs.items():
                    if cnt:
                        print(f"  {label:<26} {name:<16} runs {cnt:>8,}   average {avg:6.1f} ns")

        rates: dict[str, list[float]] = {"off": [], "on": []}
        gbps: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(3):
            for mode in ("off", "on"):
                core = Core(root, PodsFileSource(pods, node.name)) if mode == "on" else None
                if core:
                    core.start()
                try:
                    port += 1
                    rates[mode].append(short_conns(node, a, b, port))
                    port += 1
                    gbps[mode].append(iperf(node, a, b, port))
                finally:
                    if core:
                        core.close()
        r_off, r_on = statistics.median(rates["off"]), statistics.median(rates["on"])
        g_off, g_on = statistics.median(gbps["off"]), statistics.median(gbps["on"])
        print("\nside by side (median of 3 alternating rounds):")
        print(f"  short connections/s   agent off {r_off:8.0f}   on {r_on:8.0f}   ratio {r_on / r_off:.3f}")
        print(f"  iperf3 Gbit/s         agent off {g_off:8.2f}   on {g_on:8.2f}   ratio {g_on / g_off:.3f}")


if __name__ == "__main__":
    main()
