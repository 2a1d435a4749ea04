"""The latency histograms from the kernel's words to OTLP points and Prometheus text."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from otel_podnet import abi
from otel_podnet.exporters import ExportStats
from otel_podnet.exporters.console import ConsoleExporter
from otel_podnet.exporters.otlp import OtlpExporter
from otel_podnet.exporters.promtext import Renderer
from otel_podnet.inventory import PodInfo
from otel_podnet.samples import Counters, Health, Histogram, PodSample, Snapshot

UID = "0b5f2c1e-0000-4000-8000-000000000001"
POD = PodInfo(UID, "web-0", "shop")
HEALTH = Health(1, 2, 4096, 3, 65536, 0, 0, 0)


def counters(connect_out: dict[int, int], sum_ns: int, rtt_in: dict[int, int] | None = None) -> Counters:
    """Counters as the kernel lays them out: the scalars, then the four histograms."""
    words = [0] * (len(abi.COUNTER_FIELDS) + len(abi.HISTOGRAMS) * abi.HIST_WORDS)
    base = len(abi.COUNTER_FIELDS)
    for which, buckets, s in (("connect_out", connect_out, sum_ns), ("rtt_in", rtt_in or {}, 7_000)):
        off = base + abi.HISTOGRAMS.index(which) * abi.HIST_WORDS
        for i, n in buckets.items():
            words[off + i] = n
        words[off + abi.HIST_BUCKETS] = s if buckets else 0
    return Counters.from_values(words)


def test_layout_and_arithmetic() -> None:
    c = counters({15: 3, 3: 1}, 61_000_000)
    assert c.connect_out.count == 4 and c.connect_out.sum_ns == 61_000_000
    assert c.connect_in == c.rtt_out == c.rtt_in == Histogram()
    both = c + c
    assert both.connect_out.buckets[15] == 6 and both.connect_out.sum_ns == 122_000_000
    assert (both.connect_out - c.connect_out) == c.connect_out
    assert Counters.from_values(c.values()) == c
    # bounds: 1 us .. 2**26 us, then the overflow bucket
    assert abi.HIST_BOUNDS_US[0] == 1 and abi.HIST_BOUNDS_US[-1] == 2**26 and len(abi.HIST_BOUNDS_US) == 27


def test_quantile_is_the_upper_bound_of_its_bucket() -> None:
    h = counters({5: 98, 15: 2}, 0).connect_out
    assert h.quantile(0.5) == 32e-6
    assert h.quantile(0.99) == 32768e-6
    assert Histogram().quantile(0.5) is None


class Recording(MetricExporter):
    """The SDK's exporter interface, keeping what it is given (no server involved)."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[MetricsData] = []
        self.done = threading.Event()

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: object) -> MetricExportResult:
        self.got.append(metrics_data)
        self.done.set()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: object) -> None:
        pass


def points(data: MetricsData, name: str) -> dict[str, HistogramDataPoint]:
    out = {}
    for rm in data.resource_metrics:
        if rm.resource.attributes.get("k8s.pod.uid") != UID:
            continue
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    assert m.unit == "s"
                    for dp in m.data.data_points:
                        assert isinstance(dp, HistogramDataPoint)
                        out[str(dp.attributes["podnet.direction"])] = dp
    return out


def export_twice(env: dict[str, str], first: Counters, second: Counters) -> list[MetricsData]:
    rec = Recording()
    exp = OtlpExporter("node-1", ExportStats(), env=env, sdk_exporter=rec)
    for c in (first, second):
        rec.done.clear()
        exp.export(Snapshot((PodSample(None, Counters()), PodSample(UID, c)), HEALTH), {UID: POD})
        assert rec.done.wait(10)
    exp.shutdown()
    return rec.got


def test_otlp_explicit_bucket_histograms_cumulative_and_delta() -> None:
    first = counters({15: 3}, 3 * 20_400_000, rtt_in={7: 2})
    second = counters({15: 5, 16: 1}, 5 * 20_400_000 + 40_000_000, rtt_in={7: 2})
    cum = export_twice({}, first, second)
    dp = points(cum[1], "podnet.tcp.connect.duration")["outbound"]
    assert list(dp.explicit_bounds) == [2**i / 1e6 for i in range(27)]
    assert list(dp.bucket_counts) == [0] * 15 + [5, 1] + [0] * 11
    assert (dp.count, dp.sum) == (6, (5 * 20_400_000 + 40_000_000) / 1e9)
    assert dp.min is None and dp.max is None
    assert cum[1].resource_metrics[1].scope_metrics[0].metrics[-1].data.aggregation_temporality == (
        AggregationTemporality.CUMULATIVE
    )
    rtt = points(cum[1], "podnet.tcp.rtt")
    assert (rtt["inbound"].count, rtt["inbound"].sum, rtt["outbound"].count) == (2, 7e-6, 0)

    delta = export_twice({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}, first, second)
    d1 = points(delta[0], "podnet.tcp.connect.duration")["outbound"]
    d2 = points(delta[1], "podnet.tcp.connect.duration")["outbound"]
    assert list(d2.bucket_counts) == [0] * 15 + [2, 1] + [0] * 11
    assert (d2.count, d2.sum) == (3, (2 * 20_400_000 + 40_000_000) / 1e9)
    assert d1.count + d2.count == 6 and d2.start_time_unix_nano == d1.time_unix_nano
    assert points(delta[1], "podnet.tcp.rtt")["inbound"].count == 0  # nothing new


def test_prometheus_classic_histograms_named_as_the_conversion_does() -> None:
    snapshot = Snapshot((PodSample(UID, counters({15: 4, 5: 1}, 4 * 21_000_000 + 30_000)),), HEALTH)
    text = Renderer("node-1", {}).render(snapshot, {UID: POD}, 0).text().decode()
    lines = [ln for ln in text.splitlines() if 'podnet_direction="outbound"' in ln and "connect_duration" in ln]

    def value(series: str, le: str | None = None) -> float:
        found: Sequence[str] = [
            ln for ln in lines if ln.startswith(series + "{") and (le is None or f'le="{le}"' in ln)
        ]
        assert len(found) == 1, (series, le, found)
        assert 'k8s_pod_name="web-0"' in found[0] and 'k8s_namespace_name="shop"' in found[0]
        return float(found[0].rsplit(" ", 1)[1])

    name = "podnet_tcp_connect_duration_seconds"
    assert "# TYPE podnet_tcp_connect_duration_seconds histogram" in text
    assert "# TYPE podnet_tcp_rtt_seconds histogram" in text
    assert value(f"{name}_bucket", "1.6e-05") == 0
    assert value(f"{name}_bucket", "3.2e-05") == 1
    assert value(f"{name}_bucket", "0.016384") == 1
    assert value(f"{name}_bucket", "0.032768") == 5  # cumulative, as le says
    assert value(f"{name}_bucket", "67.108864") == 5
    assert value(f"{name}_bucket", "+Inf") == 5
    assert value(f"{name}_count") == 5
    assert value(f"{name}_sum") == (4 * 21_000_000 + 30_000) / 1e9


def test_console_shows_p50_and_p99() -> None:
    import io

    out = io.StringIO()
    ConsoleExporter(out).export(
        Snapshot((PodSample(UID, counters({5: 98, 15: 2}, 0, rtt_in={15: 1})),), HEALTH), {UID: POD}
    )
    row = next(ln for ln in out.getvalue().splitlines() if ln.startswith("shop/web-0"))
    assert "0.032/32.8" in row  # connect p50/p99 in ms: the 32 us bucket, the 32.768 ms bucket
    assert "32.8/32.8" in row  # rtt
