"""Memory and collection time of the agent on a node of N pods (default 110, kubelet's
default maxPods), on whatever kernel and CPU count this runs on: on this machine, or inside
a many-vCPU guest of the kernel matrix:

    python3 tests/matrix/run.py --kernel 6.12 --cpus 64 --memory 8G -- python3 bench/node_memory.py

It builds a simulated node of N pods (each one UDP datagram sent from inside it, so each
has a socket with storage), starts the agent core on it (pods from a pods file, no
exporters), collects ``--rounds`` times and prints:

- the BPF maps of this agent as the kernel accounts them (memlock, from the fdinfo of
  each map fd, which is what `bpftool map show` prints), per map and in total;
- the RSS of this process (the agent core plus the small simulated-node glue) before the
  agent started and after the collections;
- the collection time per interval (Core.collect, as podnet.agent.collection.duration
  reports it): min, median, max.

Numbers are printed, never asserted (bench/, not tests/).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.core import Core
from otel_podnet.inventory import PodsFileSource
from otel_podnet.libbpf import num_possible_cpus
from otel_podnet.simnode import SimNode, unwind_on_sigterm


def rss_kib() -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def bpf_maps_of_this_process() -> list[tuple[str, int, int, int]]:
    """(name, map id, max_entries, memlock bytes) of every BPF map fd this process holds."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-map":
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        map_id = int(fields.get("map_id", "0"))
        name = _map_name(map_id)
        out.append((name, map_id, int(fields.get("max_entries", "0")), int(fields.get("memlock", "0"))))
    return sorted(out, key=lambda m: -m[3])


def _map_name(map_id: int) -> str:
    # fdinfo has no name; bpftool does (the same memlock figure). Without bpftool: the id.
    import json
    import subprocess

    try:
        r = subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True, text=True)
        return str(json.loads(r.stdout).get("name", map_id))
    except (OSError, ValueError):
        return str(map_id)


def main() -> int:
    unwind_on_sigterm()  # killed, it still removes its simulated node
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()

    cgroup_root = find_cgroup2_mount()
    print(f"kernel {os.uname().release}, {num_possible_cpus()} possible CPUs, {os.cpu_count()} online", flush=True)
    rss_before = rss_kib()
    with SimNode(cgroup_root) as node, tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        pods = [node.add_pod(f"pod-{i}", driver="systemd" if i % 2 else "cgroupfs") for i in range(args.pods)]
        print(f"{len(pods)} pods built in {time.monotonic() - t0:.0f} s", flush=True)
        pods_file = Path(tmp) / "pods.yaml"
        node.write_pod_list(pods_file)
        core = Core(cgroup_root, PodsFileSource(pods_file, node.name))
        core.start()
        try:
            for pod in pods:  # one socket per pod: a datagram to the node's address
                node.spawn(pod, ["bash", "-c", f"echo x > /dev/udp/{node.node_ip4}/9"]).wait(30)
            durations = []
            for _ in range(args.rounds):
                snap = core.collect()
                durations.append(snap.health.collection_seconds)
            slots = snap.health.slots_in_use
            ours = {pod.uid for pod in pods}
            seen = sum(1 for s in snap.samples if s.uid in ours and s.counters.packets_tx_udp == 1)
            maps = bpf_maps_of_this_process()
            rss_after = rss_kib()
        finally:
            core.close()
    total = sum(m[3] for m in maps)
    print(f"pods reporting their one datagram: {seen} of {len(pods)}; slots read per collection: {slots}")
    print("BPF maps (memlock, as bpftool map show prints it):")
    for name, map_id, entries, memlock in maps:
        print(f"  {name:<20} id {map_id:<6} max_entries {entries:>6}  {memlock / 1024:>10,.0f} KiB")
    print(f"  {'total':<45} {total / 1024:>10,.0f} KiB ({total / 2**20:.1f} MiB)")
    print(f"RSS: {rss_before / 1024:.1f} MiB before the agent started, {rss_after / 1024:.1f} MiB after {args.rounds}")
    ms = sorted(d * 1000 for d in durations)
    print(
        f"collection time per interval ({args.rounds} rounds, {args.pods} pods): "
        f"min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
