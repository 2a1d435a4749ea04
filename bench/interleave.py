"""Benchmark: the agent's cost on short connections and throughput, modes switched every second.

``bench/run.py`` runs each mode for a whole round of its own (an agent process started,
a wrk run, an iperf3 run): on a shared virtual machine the rate drifts by 10 to 30 % over
the tens of seconds between two modes' turns, more than the few per cent being measured.
This one keeps the workload running and switches the programs under it instead:

- every build (the ablations ``floor``, ``storage``, ``nostorage`` of bench/run.py, and the
  shipped object as ``agent``) is loaded once, in this process, by the agent's own core
  (``otel_podnet.core.Core``: its maps, its pods file, its slots), and detached;
- one ``wrk`` run (``Connection: close``) against ``nginx`` in the other pod, then one
  ``iperf3`` run, each for the whole measurement;
- meanwhile, in rotating order, one mode at a time is attached (``none``: nothing), left
  ``--settle`` seconds, then measured for ``--window`` seconds from the kernel's own
  counters of the server pod's namespace (``PassiveOpens`` in ``/proc/<pid>/net/snmp``;
  received bytes of its ``eth0`` in ``/proc/<pid>/net/dev``), and the machine's busy CPU
  (``/proc/stat``, steal left out).

Each window's rate is compared with ``none``'s in the same rotation, seconds apart. The
agent's user space does not run here (no collection every 10 s: about 0.2 % of a core,
bench/agent_cpu.py measures it); the programs, their maps and their socket storage do.

Run as root: ``python3 bench/interleave.py`` (``make bench`` runs it after bench/run.py).
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from run import CUTS, busy_seconds, cut_object, start_nginx

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.core import Core
from otel_podnet.inventory import PodsFileSource
from otel_podnet.simnode import SimNode, SimPod, unwind_on_sigterm

MODES = ("none", *CUTS, "agent")


def passive_opens(pid: int) -> int:
    """TCP PassiveOpens of the network namespace process ``pid`` is in."""
    lines = [ln.split() for ln in Path(f"/proc/{pid}/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("PassiveOpens")])


def rx_bytes(pid: int, iface: str = "eth0") -> int:
    """Bytes received by ``iface`` in the network namespace process ``pid`` is in."""
    for ln in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, sep, rest = ln.partition(":")
        if sep and name.strip() == iface:
            return int(rest.split()[0])
    raise RuntimeError(f"no {iface} in /proc/{pid}/net/dev")


class Switch:
    """Every build loaded and detached; :meth:`to` attaches one mode's (or none)."""

    def __init__(self, cores: dict[str, Core]) -> None:
        self._cores = cores
        self.current = "none"

    def to(self, mode: str) -> None:
        if mode == self.current:
            return
        if self.current != "none":
            self._cores[self.current].datapath.detach()
        if mode != "none":
            self._cores[mode].datapath.attach()
        self.current = mode


def measure(
    switch: Switch,
    rotations: int,
    window: float,
    settle: float,
    counter: Callable[[], int],
) -> dict[str, list[tuple[float, float]]]:
    """mode -> [(counter units per second, busy CPU seconds per unit)] of each rotation."""
    out: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for r in range(rotations):
        k = r % len(MODES)
        for mode in MODES[k:] + MODES[:k]:  # rotate: no mode always follows the same one
            switch.to(mode)
            time.sleep(settle)
            c0, b0, t0 = counter(), busy_seconds(), time.monotonic()
            time.sleep(window)
            c1, b1, t1 = counter(), busy_seconds(), time.monotonic()
            n = c1 - c0
            out[mode].append((n / (t1 - t0), (b1 - b0) / n if n else float("nan")))
    switch.to("none")
    return out


def report(title: str, unit: str, cpu_unit: str, cpu_scale: float, xs: dict[str, list[tuple[float, float]]]) -> None:
    rotations = len(xs["none"])
    print(f"\n{title}, {rotations} rotations (medians; ratio: median over rotations of the mode's window to none's)")
    print(f"  {'mode':<10} {unit:>14} {'ratio':>6} {'IQR':>13} {'to floor':>8}   {cpu_unit:>16} {'ratio':>6}")
    for m in MODES:
        rate = [x for x, _ in xs[m]]
        ratio = sorted(x / n for (x, _), (n, _) in zip(xs[m], xs["none"], strict=True))
        q = statistics.quantiles(ratio, n=4) if len(ratio) >= 4 else [ratio[0], ratio[0], ratio[-1]]
        floor = statistics.median(x / f for (x, _), (f, _) in zip(xs[m], xs["floor"], strict=True))
        cpu = [c * cpu_scale for _, c in xs[m]]
        cpu_ratio = statistics.median(c / n for (_, c), (_, n) in zip(xs[m], xs["none"], strict=True))
        print(
            f"  {m:<10} {statistics.median(rate):>14,.1f} {statistics.median(ratio):>6.3f} "
            f"{q[0]:>6.3f}-{q[2]:<6.3f} {floor:>8.3f}   {statistics.median(cpu):>16.1f} {cpu_ratio:>6.3f}"
        )


def main() -> None:
    unwind_on_sigterm()  # killed, it still removes its simulated node
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rotations", type=int, default=30, help="rotations through every mode, per workload")
    p.add_argument("--window", type=float, default=1.0, help="seconds measured per mode and rotation")
    p.add_argument("--settle", type=float, default=0.25, help="seconds after a switch before measuring")
    a = p.parse_args()
    if a.rotations < 1 or a.window <= 0 or a.settle < 0:
        given = f"--rotations {a.rotations} --window {a.window} --settle {a.settle}"
        raise SystemExit(f"bench: {given}: expected at least 1, more than 0 s, at least 0 s")
    for tool in ("wrk", "nginx", "iperf3"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} not found (make bench installs wrk, nginx-light, iperf3)")
    span = int(a.rotations * len(MODES) * (a.window + a.settle) + 30)
    root = find_cgroup2_mount()
    with SimNode(root) as node, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        client, server = node.add_pod("client"), node.add_pod("server")
        node.sysctl(client, "net.ipv4.ip_local_port_range=1024 65000")
        node.sysctl(client, "net.ipv4.tcp_tw_reuse=1")
        node.sysctl(server, "net.core.somaxconn=4096")
        pods = tmp / "pods.yaml"
        node.write_pod_list(pods)
        objects: dict[str, Path | None] = {m: cut_object(tmp, cut) for m, cut in CUTS.items()}
        objects["agent"] = None  # the shipped object
        cores: dict[str, Core] = {}
        nginx = start_nginx(node, server, 8080, tmp)
        try:
            for mode, obj in objects.items():
                core = Core(root, PodsFileSource(pods, node.name), object_path=obj)
                cores[mode] = core
                core.start()
                core.datapath.detach()
            switch = Switch(cores)
            order = ", ".join(MODES)
            print(f"every {a.window:g} s a mode, {a.settle:g} s after the switch, in rotating order: {order}")
            results = {
                "wrk": run_wrk(node, client, server, nginx.pid, switch, a, span),
                "iperf3": run_iperf(node, client, server, switch, a, span),
            }
        finally:
            for core in cores.values():
                core.close()
            nginx.terminate()
            nginx.wait(10)
    report("short connections (wrk, Connection: close)", "connections/s", "busy CPU us/conn", 1e6, results["wrk"])
    gbit = {m: [(x * 8 / 1e9, c * 1e9 / 8 * 1e3) for x, c in xs] for m, xs in results["iperf3"].items()}
    report("throughput (iperf3)", "Gbit/s", "busy CPU ms/Gbit", 1.0, gbit)


def run_wrk(
    node: SimNode, client: SimPod, server: SimPod, server_pid: int, switch: Switch, a: argparse.Namespace, span: int
) -> dict[str, list[tuple[float, float]]]:
    url = f"http://{server.ip4}:8080/"
    load = node.spawn(client, ["wrk", "-t1", "-c32", f"-d{span}s", "-H", "Connection: close", url])
    try:
        time.sleep(2)  # warm up: caches, the listener's queue
        return measure(switch, a.rotations, a.window, a.settle, lambda: passive_opens(server_pid))
    finally:
        load.terminate()
        load.communicate(timeout=30)


def run_iperf(
    node: SimNode, client: SimPod, server: SimPod, switch: Switch, a: argparse.Namespace, span: int
) -> dict[str, list[tuple[float, float]]]:
    srv = node.spawn(server, ["iperf3", "-s", "-1", "-B", server.ip4, "-p", "5299"])
    time.sleep(0.3)
    load = node.spawn(client, ["iperf3", "-c", server.ip4, "-p", "5299", "-t", str(span)])
    try:
        time.sleep(2)
        return measure(switch, a.rotations, a.window, a.settle, lambda: rx_bytes(srv.pid))
    finally:
        for proc in (load, srv):
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


if __name__ == "__main__":
    main()
