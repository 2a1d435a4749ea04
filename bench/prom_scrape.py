"""CPU of one ``/metrics`` scrape of the Prometheus exporter, in-process, at N pods (issue 10).

    PYTHONPATH=$PWD python3 bench/prom_scrape.py [--pods 110] [--peers 6] [--rounds 10]
    PODNET_TREE=/work/main python3 bench/prom_scrape.py   # main's exporter, for the before

A synthetic snapshot like bench/agent_cpu.py's node (every pod with traffic, four latency
histograms, a few peers each, the node's Resource with the agent's health) is exported,
then the exporter's WSGI application is called as its HTTP server thread calls it, with
Prometheus' Accept header: the first scrape after each new snapshot (what a scrape every
interval costs) and a second one of the same snapshot, each without and with gzip. Every
round exports a new snapshot (all counters grown). Thread CPU time (``time.thread_time``),
median of ``--rounds``. The exporter is this checkout's, or ``PODNET_TREE``'s (main's for
the before). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("PODNET_TREE", str(REPO)))

from otel_podnet.abi import HIST_BUCKETS, HISTOGRAMS, PEER_FIELDS  # noqa: E402
from otel_podnet.exporters import ExportStats  # noqa: E402
from otel_podnet.exporters.prometheus import PrometheusExporter  # noqa: E402
from otel_podnet.inventory import PodInfo  # noqa: E402
from otel_podnet.samples import Counters, Health, PodSample, Snapshot  # noqa: E402

ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def pods(n: int) -> dict[str, PodInfo]:
    out = {}
    for i in range(n):
        ns = f"team-{i % 7}"
        name = f"web-{i % 11}-5d8f9c7b6-{i:05d}"
        out[f"uid-{i:04d}"] = PodInfo(
            f"uid-{i:04d}",
            name,
            ns,
            node_name="sim-node",
            labels={"app.kubernetes.io/name": f"web-{i % 11}"},
            workload={"k8s.deployment.name": f"web-{i % 11}", "k8s.replicaset.name": f"web-{i % 11}-5d8f9c7b6"},
        )
    return out


def snapshot(uids: list[str], n_peers: int, t: int) -> Snapshot:
    hist_len = len(HISTOGRAMS) * (HIST_BUCKETS + 1)
    samples = []
    for k, uid in enumerate([*uids, None]):
        base = (k + 1) * 1000 + t * 37
        hist = [0] * hist_len
        for h in range(len(HISTOGRAMS)):
            off = h * (HIST_BUCKETS + 1)
            for b in (5, 9, 12, 15):
                hist[off + b] = t + k + b
            hist[off + HIST_BUCKETS] = (t + k) * 123_456_789
        c = Counters.from_values([base * (j + 1) for j in range(24)] + hist)
        peers = tuple(
            (
                (
                    ("podnet.peer.kind", "pod"),
                    ("podnet.peer.namespace", f"team-{p}"),
                    ("podnet.peer.workload", f"db-{p}"),
                ),
                tuple(base + p * (j + 1) if j < 4 else (t if j == 4 else 0) for j in range(len(PEER_FIELDS))),
            )
            for p in range(n_peers)
        )
        samples.append(PodSample(uid, c, peers=peers))
    health = Health(
        pods=len(uids),
        slots_in_use=len(uids) + 2,
        slots_capacity=4096,
        cgroups_tracked=len(uids) * 2,
        cgroups_capacity=65536,
        slots_exhausted=0,
        cgroups_full=0,
        no_storage=0,
        collection_seconds=0.0123 + t * 1e-4,
        peer_rows_tracked=len(uids) * n_peers,
        peer_rows_capacity=16384,
    )
    return Snapshot(tuple(samples), health)


def wsgi_app(exporter: PrometheusExporter) -> WsgiApp:
    app = getattr(exporter, "app", None)
    if app is not None:
        return app  # type: ignore[no-any-return]
    from prometheus_client import make_wsgi_app  # main's exporter: prometheus_client serves it

    return make_wsgi_app(exporter.registry)  # type: ignore[attr-defined,no-any-return]


def scrape(app: WsgiApp, headers: Mapping[str, str]) -> bytes:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "", **headers}
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h: status.append(s)))
    assert status == ["200 OK"], status
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=110)
    ap.add_argument("--peers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    inventory = pods(args.pods)
    uids = list(inventory)
    exporter = PrometheusExporter("sim-node", ExportStats(), ("127.0.0.1", 0))
    app = wsgi_app(exporter)
    cases = {
        "first scrape": {"HTTP_ACCEPT": ACCEPT},
        "again": {"HTTP_ACCEPT": ACCEPT},
        "first scrape, gzip": {"HTTP_ACCEPT": ACCEPT, "HTTP_ACCEPT_ENCODING": "gzip"},
        "again, gzip": {"HTTP_ACCEPT": ACCEPT, "HTTP_ACCEPT_ENCODING": "gzip"},
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    sizes: dict[str, int] = {}
    export_ms: list[float] = []
    try:
        for t in range(args.rounds * 2):
            snap = snapshot(uids, args.peers, t)
            t0 = time.thread_time()
            exporter.export(snap, inventory)
            export_ms.append((time.thread_time() - t0) * 1e3)
            gz = t % 2 == 1  # alternate: a new snapshot for each first scrape
            for name, headers in cases.items():
                if name.endswith("gzip") != gz:
                    continue
                t0 = time.thread_time()
                body = scrape(app, headers)
                times[name].append((time.thread_time() - t0) * 1e3)
                sizes[name] = len(body)
    finally:
        exporter.shutdown()
    lines = sum(1 for ln in scrape(app, {"HTTP_ACCEPT": ACCEPT}).splitlines() if not ln.startswith(b"#"))
    print(f"exporter from {Path(sys.modules['otel_podnet'].__file__ or '').parent.parent}")
    print(f"{args.pods} pods, {args.peers} peers each: {lines:,} samples, Accept: Prometheus' (OpenMetrics 1.0.0)")
    print(f"  export() (once per interval)     {statistics.median(export_ms):8.2f} ms")
    for name, ms in times.items():
        print(f"  {name:<32} {statistics.median(ms):8.2f} ms  (min {min(ms):.2f})  {sizes[name]:,} B")


if __name__ == "__main__":
    main()
