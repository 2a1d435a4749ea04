"""Peer metrics (issue 12) through the real Collector: the series arrive on the Resource of
the pod they belong to, with the contract's names and attributes, summing to the pod's own
podnet.network.io; the same on the Collector's and the agent's Prometheus endpoints."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from otel_podnet.simnode import SimNode

from . import otlp_json
from .conftest import agent, exchange, gateway, wait_for

RUNNING_AS_ROOT = pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (BPF, namespaces)")


def peer(workload: str, namespace: str) -> tuple[tuple[str, str], ...]:
    return (
        ("podnet.peer.kind", "pod"),
        ("podnet.peer.namespace", namespace),
        ("podnet.peer.workload", workload),
        ("podnet.peer.workload.kind", "pod"),
    )


def point(metric: str, first: tuple[str, str], attrs: tuple[tuple[str, str], ...]) -> otlp_json.Point:
    return metric, tuple(sorted((first, *attrs)))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


@RUNNING_AS_ROOT
def test_peer_series_on_the_right_resources(otelcol: Path, node: SimNode, tmp_path: Path) -> None:
    web = node.add_pod("web-7d4b9c-x2x", "shop")
    api = node.add_pod("api-0", "shop")
    db = node.add_pod("db-0", "data")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    tx, rx = ("network.io.direction", "transmit"), ("network.io.direction", "receive")
    out, inb = ("podnet.direction", "outbound"), ("podnet.direction", "inbound")
    web_to_api = point("podnet.peer.tcp.connections.opened", out, peer("api-0", "shop"))
    api_from_web = point("podnet.peer.tcp.connections.opened", inb, peer("web-7d4b9c-x2x", "shop"))
    api_to_db = point("podnet.peer.tcp.connections.opened", out, peer("db-0", "data"))
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint}
        with agent(pods_file, env, prometheus=True) as a:
            exchange(node, web, api, 7200, n=12, up=40_000, down=3_000)
            exchange(node, api, db, 7201, n=30, up=500, down=7_000)

            def settled() -> bool:
                reqs = otlp_json.requests(col.file)
                if not reqs:
                    return False
                pts = {str(r.get("k8s.pod.uid")): p for r, p in otlp_json.by_pod(reqs[-1])}
                return pts.get(api.uid, {}).get(api_to_db) == 30 and pts.get(api.uid, {}).get(api_from_web) == 12

            wait_for(settled, what="the collector to receive the peer series")
            time.sleep(1.5)  # a few more intervals: the last packets of the closes are in
            own = scrape(a.prom_port or 0)
            rc, err = a.stop()
        assert rc == 0, err
        time.sleep(0.5)
        request = otlp_json.requests(col.file)[-1]
        collector_prom = scrape(col.prom)

    pods = {str(res.get("k8s.pod.uid", "node")): (res, pts) for res, pts in otlp_json.by_pod(request)}
    res_web, p_web = pods[web.uid]
    res_api, p_api = pods[api.uid]
    res_db, p_db = pods[db.uid]
    assert res_db["k8s.namespace.name"] == "data"
    assert res_web["k8s.pod.name"] == "web-7d4b9c-x2x" and res_api["k8s.pod.name"] == "api-0"
    # each pod's peers on its own Resource, and only its own
    assert p_web[web_to_api] == 12 and api_from_web not in p_web
    assert (p_api[api_from_web], p_api[api_to_db]) == (12, 30)
    assert p_db[point("podnet.peer.tcp.connections.opened", inb, peer("api-0", "shop"))] == 30
    assert not any(k[0] == "podnet.peer.tcp.connections.failed" for k in (*p_web, *p_api, *p_db))
    for pts, peers in ((p_web, [peer("api-0", "shop")]), (p_db, [peer("api-0", "shop")])):
        assert sorted(k[1] for k in pts if k[0] == "podnet.peer.network.io") == sorted(
            tuple(sorted((d, *p))) for d in (tx, rx) for p in peers
        )
    # summed over peers, the pod's podnet.network.io (by direction), exactly
    for pts in (p_web, p_api, p_db):
        for d in (tx, rx):
            peers = sum(v for (m, a), v in pts.items() if m == "podnet.peer.network.io" and d in a)
            own_io = sum(v for (m, a), v in pts.items() if m == "podnet.network.io" and d in a)
            assert peers == own_io > 0
    # the payload is in there: web sent 12 x 40 kB to api
    assert p_web[point("podnet.peer.network.io", tx, peer("api-0", "shop"))] > 480_000

    # the same series in the Collector's Prometheus exporter and on the agent's own /metrics
    want = p_api[point("podnet.peer.network.io", rx, peer("web-7d4b9c-x2x", "shop"))]
    for text in (collector_prom, own):
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("podnet_peer_network_io_bytes_total{")
            and f'k8s_pod_uid="{api.uid}"' in ln
            and 'network_io_direction="receive"' in ln
            and 'podnet_peer_workload="web-7d4b9c-x2x"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == want
        assert 'podnet_peer_kind="pod"' in line and 'podnet_peer_workload_kind="pod"' in line
