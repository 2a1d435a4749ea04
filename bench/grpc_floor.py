"""What gRPC's own threads cost a process that exports nothing of its own (issue 10: the
agent's whole-process goal is 0.2 % of a core, 20 ms per 10 s interval):

    PYTHONPATH=$PWD python3 bench/grpc_floor.py [--seconds 60]

Each case is a fresh ``python3`` process that imports what the agent imports for OTLP
gRPC and then, for ``--seconds``:

- ``imported``: nothing more (the modules only);
- ``channel, idle``: a channel to the real OpenTelemetry Collector (collector-config/
  gateway.yaml, as tests/e2e runs it), connected once, then idle;
- ``SDK exporter, empty export every 10 s``: the SDK's ``OTLPMetricExporter`` (the one the
  agent subclasses) sending an empty request every 10 s, as the agent sends its request.

Each prints the CPU of every thread (schedstat run time), in ms per 10 s. Numbers are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.collector import build_otelcol  # noqa: E402
from tests.e2e.conftest import gateway  # noqa: E402

CHILD = r"""
import json, os, sys, time
case, endpoint, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
import grpc
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import MetricsData

def threads():
    out = {}
    for t in os.listdir("/proc/self/task"):
        comm = open(f"/proc/self/task/{t}/comm").read().strip()
        out[f"{comm}/{t}"] = int(open(f"/proc/self/task/{t}/schedstat").read().split()[0]) / 1e6
    return out

exporter = channel = None
if case == "channel":
    channel = grpc.insecure_channel(endpoint)
    grpc.channel_ready_future(channel).result(timeout=10)
elif case == "exporter":
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=10)
    exporter.export(MetricsData(resource_metrics=[]))
time.sleep(2)
a, t0 = threads(), time.monotonic()
while time.monotonic() - t0 < seconds:
    time.sleep(min(10.0, seconds - (time.monotonic() - t0)))
    if exporter is not None:
        exporter.export(MetricsData(resource_metrics=[]))
b, wall = threads(), time.monotonic() - t0
print(json.dumps({k: (v - a.get(k, 0.0)) * 10.0 / wall for k, v in b.items()}))
"""

CASES = (
    ("imported", "imported"),
    ("channel", "channel, idle"),
    ("exporter", "SDK exporter, empty export every 10 s"),
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as t, gateway(build_otelcol(), Path(t) / "col") as col:
        endpoint = col.grpc_endpoint.removeprefix("http://")
        for case, label in CASES:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, case, endpoint, str(args.seconds)],
                capture_output=True,
                text=True,
                check=True,
                timeout=args.seconds + 120,
            ).stdout
            per_thread = json.loads(out.strip().splitlines()[-1])
            main_ms = sum(v for k, v in per_thread.items() if k.startswith("python3/"))
            grpc_ms = sum(v for k, v in per_thread.items() if not k.startswith("python3/"))
            busy = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1]) if v >= 0.05)
            print(f"{label:40s} gRPC's threads {grpc_ms:5.1f} ms per 10 s, main thread {main_ms:4.1f} ({busy})")
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
