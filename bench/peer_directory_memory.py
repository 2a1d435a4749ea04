"""Memory and sync time of the peer directory (otel_podnet.kube.KubePeerDirectory) at
N pods (default 10,000) against the real kube-apiserver the e2e tests build:

    PYTHONPATH=$PWD python3 bench/peer_directory_memory.py [--pods 10000]

It starts etcd and kube-apiserver (tests/e2e/apiserver.py, binaries from
tests/e2e/infra/build-kube.sh), creates the pods of a cluster of ``--nodes`` nodes (bare Pod
objects with owners, labels, two containers, and status.podIP set through the status
subresource, as a kubelet would: no kubelet runs), with 80 % of them in Deployments of 8
pods, 10 % in StatefulSets of 10, 5 % in DaemonSets (one pod per node) and 5 % bare; a
Service with one EndpointSlice of its ready pods per Deployment and StatefulSet; then:

then, for each ``--page-size`` (default 100, the directory's), in a fresh process that holds nothing else:

1. starts a directory and times its first sync (the three lists, page by page), and the
   RSS of the process before and after (``kubernetes`` imported before the first figure);
2. looks every pod IP and ClusterIP up, timed, and checks the answers against what was
   created (a wrong answer fails the run: the figures would be of something else);
3. stops it and syncs again under tracemalloc: the memory the synced directory keeps
   (current) and the peak during the sync (the pages being decoded).

Numbers are printed, never asserted as performance (bench/, not tests/).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from otel_podnet.kube import KubePeerDirectory, api_client, load_configuration
from otel_podnet.kube_source import ApiTarget
from otel_podnet.peerinfo import PeerWorkload
from tests.e2e.apiserver import ApiServer, run_apiserver

Obj = dict[str, Any]
IMAGE = "registry.invalid/bench/app:1.2.3"


def rss_kib() -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def pod_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"


def plan(pods: int, nodes: int) -> list[tuple[str, str, str, Obj | None, dict[str, str], PeerWorkload]]:
    """(namespace, pod name, node, owner reference, labels, expected workload) of every pod."""
    out: list[tuple[str, str, str, Obj | None, dict[str, str], PeerWorkload]] = []
    namespaces = [f"team-{n:02d}" for n in range(20)]
    n_deploy, n_sts, n_ds = pods * 80 // 100 // 8, pods * 10 // 100 // 10, pods * 5 // 100 // nodes
    i = 0

    def add(ns: str, name: str, owner: Obj | None, labels: dict[str, str], want: PeerWorkload) -> None:
        nonlocal i
        out.append((ns, name, f"node-{i % nodes:03d}", owner, labels, want))
        i += 1

    for d in range(n_deploy):
        ns, dep, pth = namespaces[d % 20], f"svc{d:04d}-api", f"{d:010x}"[-10:]
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": f"{dep}-{pth}",
            "uid": f"{d:08x}-0000-4000-8000-000000000001",
            "controller": True,
        }
        for r in range(8):
            labels = {"app.kubernetes.io/name": dep, "pod-template-hash": pth, "tier": "backend"}
            add(ns, f"{dep}-{pth}-{r:05d}", rs, labels, PeerWorkload(ns, dep, "deployment"))
    for s in range(n_sts):
        ns, sts = namespaces[s % 20], f"db{s:03d}"
        ref = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": sts,
            "uid": f"{s:08x}-0000-4000-8000-000000000002",
            "controller": True,
        }
        for r in range(10):
            add(ns, f"{sts}-{r}", ref, {"app.kubernetes.io/name": sts}, PeerWorkload(ns, sts, "statefulset"))
    for k in range(n_ds):
        ref = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": f"agent{k}",
            "uid": f"{k:08x}-0000-4000-8000-000000000003",
            "controller": True,
        }
        for r in range(nodes):
            add(
                "kube-system",
                f"agent{k}-{r:05x}",
                ref,
                {"app": f"agent{k}"},
                PeerWorkload("kube-system", f"agent{k}", "daemonset"),
            )
    while i < pods:
        ns = namespaces[i % 20]
        add(ns, f"solo-{i:05d}", None, {"run": "solo"}, PeerWorkload(ns, f"solo-{i:05d}", "pod"))
    return out


def retried(call: Callable[[], Any], existing: Callable[[], Any] | None = None) -> Any:
    """``call()``, again after a 5xx or 429 (a busy API server: "resource quota evaluation
    timed out"); a 409 of a create that had gone through before is ``existing()``."""
    for attempt in range(8):
        try:
            return call()
        except ApiException as exc:
            if exc.status == 409 and existing is not None and attempt > 0:
                return existing()
            if exc.status != 429 and not 500 <= (exc.status or 0) < 600:
                raise
        time.sleep(0.5 * 2**attempt)
    return call()


class Writer:
    """Creates the objects over kept-alive connections (the kubernetes client's pool): a new
    TLS connection per request, as tests/e2e/apiserver.py makes them, is ten times slower."""

    def __init__(self, api: ApiServer, workers: int) -> None:
        cfg: Any = k8s_client.Configuration()
        loaders: Any = k8s_config
        loaders.load_kube_config(config_file=str(api.admin_kubeconfig), client_configuration=cfg, persist_config=False)
        cfg.retries = 0
        cfg.connection_pool_maxsize = workers
        self.client = k8s_client.ApiClient(configuration=cfg)
        self.core: Any = k8s_client.CoreV1Api(self.client)
        self.discovery: Any = k8s_client.DiscoveryV1Api(self.client)

    def pod(self, i: int, p: tuple[str, str, str, Obj | None, dict[str, str], PeerWorkload]) -> Obj:
        ns, name, node, owner, labels, _ = p
        meta: Obj = {"name": name, "labels": labels, "annotations": {"bench.otel-podnet/index": str(i)}}
        if owner:
            meta["ownerReferences"] = [owner]
        container = {
            "image": IMAGE,
            "ports": [{"containerPort": 8080, "name": "http"}],
            "env": [{"name": "MODE", "value": "bench"}, {"name": "LOG_LEVEL", "value": "info"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [{"name": "app", **container}, {"name": "sidecar", **container, "ports": []}],
            },
        }
        created = retried(
            lambda: json.loads(self.core.create_namespaced_pod(ns, pod, _preload_content=False).data),
            lambda: json.loads(self.core.read_namespaced_pod(name, ns, _preload_content=False).data),
        )
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "phase": "Running",
            "podIP": pod_ip(i),
            "podIPs": [{"ip": pod_ip(i)}],
            "hostIP": "192.168.0.1",
            "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        }
        retried(
            lambda: (
                self.core.patch_namespaced_pod_status(
                    name, ns, {"status": status}, _preload_content=False, _content_type="application/merge-patch+json"
                ).data
            )  # read, so the kept-alive connection is clean for the next request
        )
        return dict(created)

    def service(self, ns: str, name: str, members: list[Obj], ips: list[str]) -> str:
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        created = retried(
            lambda: json.loads(self.core.create_namespaced_service(ns, svc, _preload_content=False).data),
            lambda: json.loads(self.core.read_namespaced_service(name, ns, _preload_content=False).data),
        )
        endpoints = [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": m["spec"]["nodeName"],
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": m["metadata"]["name"],
                    "uid": m["metadata"]["uid"],
                },
            }
            for m, ip in zip(members, ips, strict=True)
        ]
        eps = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x7k2q", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
        retried(
            lambda: self.discovery.create_namespaced_endpoint_slice(ns, eps, _preload_content=False).data,
            lambda: None,
        )
        return str(created["spec"]["clusterIP"])


def sync(kubeconfig: Path, page_size: int) -> tuple[KubePeerDirectory, float]:
    cfg = load_configuration(ApiTarget(False, kubeconfig, "bench"))
    d = KubePeerDirectory(api_client(cfg), server=cfg.host, credentials="bench", page_size=page_size)
    began = time.monotonic()
    d.start()
    if not d.wait_synced(600):
        raise SystemExit("the directory did not sync within 600 s")
    return d, time.monotonic() - began


def warm_up(kubeconfig: Path) -> None:
    """One call of each list the directory makes, with a throwaway client (the transport's
    first requests: TLS context, connection pool); its RSS is reported apart."""
    cfg = load_configuration(ApiTarget(False, kubeconfig, "bench"))
    client = api_client(cfg)
    try:
        for path in ("/api/v1/pods", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"):
            client.get(path, {"limit": 1}, timeout=(10, 60))
    finally:
        client.close()


def measure(kubeconfig: Path, page_size: int, expect_file: Path) -> int:
    """One directory in this (fresh) process: figures printed, answers checked."""
    expect = json.loads(expect_file.read_text())
    pods: dict[str, list[str]] = expect["pods"]
    services: dict[str, list[Any]] = expect["services"]
    gc.collect()
    rss_start = rss_kib()
    warm_up(kubeconfig)
    gc.collect()
    rss0 = rss_kib()
    d, seconds = sync(kubeconfig, page_size)
    gc.collect()
    rss1 = rss_kib()
    sizes = d.tables.sizes()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        got = [d.pod_by_ip(ip) for ip in pods]
        times.append((time.perf_counter() - t) / len(pods))
    wrong = [ip for ip, g in zip(pods, got, strict=True) if g != PeerWorkload(*pods[ip])]
    t = time.perf_counter()
    refs = [d.service_by_ip(ip) for ip in services]
    svc_first = (time.perf_counter() - t) / len(services)
    t = time.perf_counter()
    refs = [d.service_by_ip(ip) for ip in services]
    svc_cached = (time.perf_counter() - t) / len(services)
    wrong += [
        ip
        for ip, r in zip(services, refs, strict=True)
        if r is None or [r.namespace, r.name, [[b.namespace, b.workload, b.kind] for b in r.backends]] != services[ip]
    ]
    d.stop()
    if wrong:
        print(f"WRONG answers for {len(wrong)} addresses, e.g. {wrong[:5]}", file=sys.stderr)
        return 1
    gc.collect()
    tracemalloc.start()
    d2, traced_seconds = sync(kubeconfig, page_size)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    d2.stop()
    print(f"page size {page_size}:")
    print(f"  synced: {sizes['pods']} pods, {sizes['services']} Services, {sizes['endpointslices']} EndpointSlices")
    print(f"  first sync (three lists)                {seconds:6.2f} s   ({traced_seconds:.2f} s under tracemalloc)")
    print(
        f"  RSS of the process                      {rss_start / 1024:6.1f} MiB, then {rss0 / 1024:6.1f} MiB after the "
        f"client's first calls (+{(rss0 - rss_start) / 1024:.1f} MiB), then {rss1 / 1024:6.1f} MiB synced "
        f"(+{(rss1 - rss0) / 1024:.1f} MiB)"
    )
    print(
        f"  tracemalloc: kept after the sync        {current / 2**20:6.2f} MiB   ({current / len(pods):.0f} B per pod)"
    )
    print(f"  tracemalloc: peak during the sync       {peak / 2**20:6.2f} MiB")
    print(
        f"  pod_by_ip                               {statistics.median(times) * 1e9:6.0f} ns per lookup "
        f"(median of 5 x {len(pods)})"
    )
    print(
        f"  service_by_ip                           {svc_first * 1e6:6.1f} us first, {svc_cached * 1e9:.0f} ns cached"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=8, help="parallel requests while creating the objects")
    ap.add_argument(
        "--page-size",
        type=int,
        action="append",
        help="list page size(s) to measure, each in a fresh process (the directory's default, 100)",
    )
    ap.add_argument("--measure", nargs=2, metavar=("KUBECONFIG", "EXPECT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    page_sizes = args.page_size or [100]
    if args.measure:
        return measure(Path(args.measure[0]), page_sizes[0], Path(args.measure[1]))

    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp, run_apiserver(Path(tmp)) as api:
        pods = plan(args.pods, args.nodes)
        for ns in sorted({p[0] for p in pods}):
            if ns == "kube-system":
                api.create_service_account(ns, "default", exist_ok=True)
            else:
                api.create_namespace(ns)
        began = time.monotonic()
        writer = Writer(api, args.workers)
        with ThreadPoolExecutor(args.workers) as pool:
            created = list(pool.map(lambda ip: writer.pod(*ip), enumerate(pods)))
            groups: dict[tuple[str, str], list[int]] = {}
            for i, p in enumerate(pods):
                if p[5].kind in ("deployment", "statefulset"):
                    groups.setdefault((p[0], p[5].workload), []).append(i)
            keys = sorted(groups)
            cluster_ips = list(
                pool.map(
                    lambda k: writer.service(
                        k[0], k[1], [created[i] for i in groups[k]], [pod_ip(i) for i in groups[k]]
                    ),
                    keys,
                )
            )
        writer.client.close()
        n_endpoints = sum(len(v) for v in groups.values())
        print(
            f"created {len(pods)} pods on {args.nodes} nodes, {len(keys)} Services with {n_endpoints} endpoints "
            f"in {time.monotonic() - began:.0f} s (kube-apiserver {api.kubectl('version').stdout.split()[-1]})"
        )
        expect = {
            "pods": {pod_ip(i): [p[5].namespace, p[5].workload, p[5].kind] for i, p in enumerate(pods)},
            "services": {
                ip: [k[0], k[1], [[k[0], k[1], pods[groups[k][0]][5].kind]]]
                for ip, k in zip(cluster_ips, keys, strict=True)
            },
        }
        expect_file = Path(tmp) / "expect.json"
        expect_file.write_text(json.dumps(expect))
        rc = 0
        for size in page_sizes:
            sys.stdout.flush()
            argv = [sys.executable, __file__, "--measure", str(api.admin_kubeconfig), str(expect_file)]
            rc |= subprocess.run([*argv, "--page-size", str(size)], check=False).returncode
        return rc


if __name__ == "__main__":
    sys.exit(main())
