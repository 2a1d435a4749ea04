"""The OTLP exporter's memory is bounded: final samples kept through a collector outage,
and the delta state of pods that left. The collector is the SDK's real OTLP/HTTP exporter
pointed at a closed port (down), or the SDK's console exporter (up)."""

from __future__ import annotations

import io

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

from otel_podnet.exporters import ExportStats
from otel_podnet.exporters.otlp import OtlpExporter
from otel_podnet.inventory import PodInfo
from otel_podnet.samples import Counters, Health, PodSample, Snapshot

HEALTH = Health(
    pods=0, slots_in_use=1, slots_capacity=8, cgroups_tracked=0, cgroups_capacity=8, slots_exhausted=0,
    cgroups_full=0, no_storage=0,
)  # fmt: skip


def snapshot(*samples: PodSample) -> Snapshot:
    return Snapshot((PodSample(None, Counters()), *samples), HEALTH)


def info(uid: str) -> PodInfo:
    return PodInfo(uid=uid, name=f"pod-{uid}", namespace="default")


def test_unsent_finals_are_bounded_newest_kept() -> None:
    down = OTLPMetricExporter(endpoint="http://127.0.0.1:9/v1/metrics", timeout=1)
    exp = OtlpExporter("node", ExportStats(), env={}, sdk_exporter=down, max_unsent_finals=3)
    try:
        for i in range(5):  # five pods leave while the collector is down
            uid = f"p{i}"
            exp._export_one(snapshot(PodSample(uid, Counters(opened_out=i + 1), final=True)), {uid: info(uid)}, 1)
        assert list(exp._unsent_finals) == ["p2", "p3", "p4"]
        assert exp.finals_dropped == 2
        assert [s.counters.opened_out for s, _ in exp._unsent_finals.values()] == [3, 4, 5]
    finally:
        exp.shutdown()


def test_delta_state_forgets_a_pod_that_left_without_a_final() -> None:
    up = ConsoleMetricExporter(out=io.StringIO())
    env = {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}
    exp = OtlpExporter("node", ExportStats(), env=env, sdk_exporter=up)
    try:
        exp._export_one(snapshot(PodSample("a", Counters(opened_out=2)), PodSample("b", Counters())), {}, 1)
        assert {k[0] for k in exp._last} == {None, "a", "b"}
        # "a" is gone from the next snapshot with no final sample (it never had a slot)
        exp._export_one(snapshot(PodSample("b", Counters(opened_in=1))), {}, 2)
        assert {k[0] for k in exp._last} == {None, "b"}
        assert exp._last[("b", "podnet.tcp.connections.opened", (("podnet.direction", "inbound"),))] == 1
        # and a final removes its pod's state once exported
        exp._export_one(snapshot(PodSample("b", Counters(opened_in=1), final=True)), {}, 3)
        assert {k[0] for k in exp._last} == {None}
    finally:
        exp.shutdown()
