"""The latency histograms through the real Collector (collector-config/gateway.yaml): OTLP
explicit-bucket histograms per pod, and the Prometheus names the conversion makes of them,
the same in the Collector's output and on the agent's own /metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from otel_podnet.simnode import SimNode

from . import otlp_json
from .conftest import agent, exchange, gateway, wait_for

RUNNING_AS_ROOT = pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (BPF, namespaces)")

B20MS = 15  # bucket (16.384 ms, 32.768 ms]
# A frame the delay line releases up to 8 ms late keeps its sample in that bucket; each one
# it lists as later (it lost its CPU on a shared machine) may carry one sample past it.
LATE_OK_US = 8_000


def assert_20ms(buckets: list[int], n: int, stalls: tuple[int, ...]) -> None:
    """n samples: none faster than the 20 ms wire, none past its bucket but for stalls."""
    assert sum(buckets) == n and sum(buckets[:B20MS]) == 0, buckets
    assert sum(buckets[B20MS + 1 :]) <= len(stalls), (buckets, stalls)


def histograms(request: dict[str, Any], uid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(metric, podnet.direction) -> the OTLP JSON histogram point of one pod."""
    out = {}
    for rm in request.get("resourceMetrics", []):
        if otlp_json.attrs(rm.get("resource", {}).get("attributes")).get("k8s.pod.uid") != uid:
            continue
        for sm in rm.get("scopeMetrics", []):
            for m in sm.get("metrics", []):
                if "histogram" not in m:
                    continue
                for dp in m["histogram"]["dataPoints"]:
                    direction = otlp_json.attrs(dp.get("attributes"))["podnet.direction"]
                    out[(m["name"], direction)] = {**dp, "temporality": m["histogram"]["aggregationTemporality"]}
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def prom_series(text: str, name: str, uid: str, direction: str) -> dict[str, float]:
    """le (or "sum"/"count") -> value of one pod's classic histogram series."""
    out = {}
    for ln in text.splitlines():
        if not ln.startswith(name) or f'k8s_pod_uid="{uid}"' not in ln or f'podnet_direction="{direction}"' not in ln:
            continue
        series, value = ln.rsplit(" ", 1)
        suffix = series[len(name) : series.index("{")]
        le = re.search(r'le="([^"]+)"', series)
        out[le.group(1) if le else suffix.lstrip("_")] = float(value)
    return out


@RUNNING_AS_ROOT
def test_connect_and_rtt_histograms_over_otlp_and_prometheus(otelcol: Path, node: SimNode, tmp_path: Path) -> None:
    cli, srv = node.add_pod("client"), node.add_pod("server-slow")
    relay = node.delay_link(srv, 0.020)
    node.static_neighbors()
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    n = 12
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint}
        with agent(pods_file, env, prometheus=True) as a:
            exchange(node, cli, srv, 7300, n=n, up=100, down=100)

            def settled() -> bool:
                reqs = otlp_json.requests(col.file)
                h = histograms(reqs[-1], cli.uid) if reqs else {}
                rtt = h.get(("podnet.tcp.rtt", "outbound"), {})
                return int(rtt.get("count", 0)) == n

            wait_for(settled, what="the collector to receive the histograms")
            own = scrape(a.prom_port or 0)
            rc, err = a.stop()
        assert rc == 0, err
        time.sleep(0.5)
        request = otlp_json.requests(col.file)[-1]
        collector_prom = scrape(col.prom)
    wire = node.stop_delay(relay)
    assert wire.dropped == 0 and wire.delayed > 0, wire
    stalls = wire.late_over(LATE_OK_US)

    bounds = [2**i / 1e6 for i in range(27)]
    h = histograms(request, cli.uid)
    counts: dict[str, list[int]] = {}
    for key in (("podnet.tcp.connect.duration", "outbound"), ("podnet.tcp.rtt", "outbound")):
        dp = h[key]
        assert dp["temporality"] == 2  # cumulative
        assert [float(b) for b in dp["explicitBounds"]] == pytest.approx(bounds, rel=1e-12)
        counts[key[0]] = [int(c) for c in dp["bucketCounts"]]  # uint64: strings in OTLP JSON
        assert len(counts[key[0]]) == 28, key
        assert_20ms(counts[key[0]], n, stalls)
        assert int(dp["count"]) == n
        assert n * 0.020 <= dp["sum"] < n * 0.030 + sum(stalls) / 1e6
        assert "min" not in dp and "max" not in dp  # unknown, so not made up
    assert int(h[("podnet.tcp.connect.duration", "inbound")].get("count", 0)) == 0  # zero: omitted in JSON
    hs = histograms(request, srv.uid)
    # its SYN-ACKs waited
    assert_20ms([int(c) for c in hs[("podnet.tcp.connect.duration", "inbound")]["bucketCounts"]], n, stalls)

    # classic histograms under the names the OpenTelemetry-to-Prometheus conversion makes
    for text in (collector_prom, own):
        for name, otlp_name in (
            ("podnet_tcp_connect_duration_seconds", "podnet.tcp.connect.duration"),
            ("podnet_tcp_rtt_seconds", "podnet.tcp.rtt"),
        ):
            s = prom_series(text, name, cli.uid, "outbound")
            # le="0.032768" is cumulative: every sample up to and in the 20 ms bucket
            upto = sum(counts[otlp_name][: B20MS + 1])
            assert s["0.016384"] == 0 and s["0.032768"] == upto and s["+Inf"] == n, (name, s)
            assert s["count"] == n and n * 0.020 <= s["sum"] < n * 0.030 + sum(stalls) / 1e6
