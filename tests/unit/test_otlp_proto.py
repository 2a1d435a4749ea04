"""The OTLP request built directly (otlp_proto, issue 10) is the request the SDK's
encode_metrics() makes of the data model, interval after interval: values changing, series
appearing, a pod's identity changing, a pod leaving, then intervals where only values
change (the request is kept and its points set in place), delta and cumulative."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otel_podnet import abi
from otel_podnet.exporters import ExportStats
from otel_podnet.exporters.otlp import OtlpExporter, make_sdk_exporter
from otel_podnet.exporters.otlp_proto import ChannelPerExport, EncodedRequest, GrpcExporter, count_points
from otel_podnet.inventory import PodInfo
from otel_podnet.samples import Counters, Health, PodSample, Snapshot

A, B, C = (f"0b5f2c1e-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
PEER = (("podnet.peer.kind", "pod"), ("podnet.peer.namespace", "shop"), ("podnet.peer.workload", "db"))
NODE_PEER = (("podnet.peer.kind", "node"),)


class Keeping(MetricExporter):
    """Keeps what it is given; ``accepts_request`` as the SDK's exporters here do."""

    def __init__(self, accepts_request: bool) -> None:
        super().__init__()
        self.accepts_request = accepts_request
        self.got: list[Any] = []

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: object) -> MetricExportResult:
        if isinstance(metrics_data, EncodedRequest):  # as a receiver parses it
            assert count_points(metrics_data.message()) == metrics_data.points
            metrics_data = metrics_data.message()
        self.got.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: object) -> None:
        pass


def counters(k: int) -> Counters:
    """Cumulative figures that grow with ``k``."""
    words = [i * 7919 + k * 104729 for i in range(len(abi.COUNTER_FIELDS))]
    hist = [0] * (len(abi.HISTOGRAMS) * abi.HIST_WORDS)
    for h in range(len(abi.HISTOGRAMS)):
        off = h * abi.HIST_WORDS
        hist[off + 3 + h] = k + h
        hist[off + 9 + h] = k * k
        hist[off + abi.HIST_BUCKETS] = 1_000 * k + 17 * h
    return Counters.from_values(words + hist)


def snapshots() -> list[tuple[Snapshot, dict[str, PodInfo]]]:
    pa = PodInfo(A, "web-0", "shop", labels={"app.kubernetes.io/name": "web"})
    pb = PodInfo(B, "db-0", "shop", workload={"k8s.statefulset.name": "db"})
    pb_relabelled = PodInfo(B, "db-0", "shop", labels={"app.kubernetes.io/name": "database"})
    out = []
    for k in range(1, 9):
        health = Health(2, 3, 505, 9, 9952, 0, 0, 0, collection_seconds=0.001 * k, peer_rows_capacity=64)
        peers_a: tuple[Any, ...] = ((PEER, (100 * k, 50 * k, k, 0, 0, 0, 0, 0, 0)),)
        if k >= 3:  # a series appears: a second peer, a failure
            peers_a += ((NODE_PEER, (10 * k, 0, 0, 0, k, 0, 0, 0, 1)),)
        samples = [
            PodSample(None, counters(k), peers=((NODE_PEER, (k, k, 0, 0, 0, 0, 0, 0, 0)),)),
            PodSample(A, counters(k + 1), peers=peers_a),
            PodSample(C, counters(min(k, 5) + 2)),  # known by its cgroup only; idle from k=5 on
        ]
        if k <= 4:  # B leaves after its final sample
            samples.append(PodSample(B, counters(k + 3), final=k == 4))
        pods = {A: pa, B: pb_relabelled if k >= 2 else pb}
        out.append((Snapshot(tuple(samples), health), pods))
    return out


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_request_is_what_encode_metrics_makes_of_the_data_model(temporality: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality, "OTEL_RESOURCE_ATTRIBUTES": "k=v"}
    direct, model = Keeping(accepts_request=True), Keeping(accepts_request=False)
    fast = OtlpExporter("node-1", ExportStats(), env=env, sdk_exporter=direct)
    slow = OtlpExporter("node-1", ExportStats(), env=env, sdk_exporter=model)
    slow._start_ns = slow._last_ok_ns = fast._start_ns
    try:
        for i, (snap, pods) in enumerate(snapshots()):
            now = fast._start_ns + (i + 1) * 10**10
            fast._export_one(snap, dict(pods), now)
            slow._export_one(snap, dict(pods), now)
    finally:
        fast.shutdown()
        slow.shutdown()
    assert len(direct.got) == len(model.got) == 8
    for got, data in zip(direct.got, model.got, strict=True):
        assert isinstance(got, ExportMetricsServiceRequest) and isinstance(data, MetricsData)
        want = encode_metrics(data)
        assert got == want
        assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    # the Resources followed the pods: B renamed its service, then left
    names = [
        [
            dict((kv.key, kv.value.string_value) for kv in rm.resource.attributes).get("service.name")
            for rm in r.resource_metrics
        ]
        for r in direct.got
    ]
    assert names[0] == ["otel-podnet", "web", "unknown_service", "db"]
    assert names[1] == ["otel-podnet", "web", "unknown_service", "database"]
    assert names[4] == names[7] == ["otel-podnet", "web", "unknown_service"]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_sdk_exporters_take_the_request_ready_made(protocol: str) -> None:
    sdk = make_sdk_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": protocol})
    try:
        assert getattr(sdk, "accepts_request", False)
    finally:
        sdk.shutdown()


def test_grpc_opens_a_channel_per_export_at_intervals_of_5_s_and_more() -> None:
    """ChannelPerExport (issue 10): at 5 s and more the SDK's gRPC exporter is built for each
    export and shut down after, so no channel (and none of gRPC's threads) stays between
    exports; at shorter intervals one exporter is kept. Both take the request ready-made."""
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    per = make_sdk_exporter(env, interval=10.0)
    kept = make_sdk_exporter(env, interval=1.0)
    try:
        assert isinstance(per, ChannelPerExport) and per.accepts_request
        assert isinstance(kept, GrpcExporter) and kept.accepts_request
        assert isinstance(make_sdk_exporter(env, interval=5.0), ChannelPerExport)
    finally:
        per.shutdown()
        kept.shutdown()
    assert per.export(ExportMetricsServiceRequest()) == MetricExportResult.FAILURE  # after shutdown


def test_a_value_that_changes_type_but_not_value_changes_its_field() -> None:
    """0 == 0.0 in Python, but as_int is not as_double: a series whose value turns from
    int 0 to float 0.0 and back is encoded as encode_metrics() has it each time, and a
    histogram whose count is 0 reads back as the same message."""
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    from otel_podnet.exporters.otlp import SCOPE, _model
    from otel_podnet.exporters.otlp_proto import (
        GAUGE,
        HISTOGRAM,
        NO_START,
        SINCE_START,
        Group,
        Layout,
        RequestEncoder,
        Spec,
    )
    from otel_podnet.samples import Histogram
    from otel_podnet.series import HEALTH_METRICS, POD_HISTOGRAMS

    gauge, (hist_def, hist_attrs, _) = HEALTH_METRICS[0], POD_HISTOGRAMS[0]
    encoder = RequestEncoder(SCOPE.name, SCOPE.version or "")
    resource = (("k8s.node.name", "node-1"),)
    attrs = ((("a", "1"),), (("a", ""),))
    cumulative = AggregationTemporality.CUMULATIVE
    layout = Layout(
        [Spec(gauge, GAUGE, 0, attrs, NO_START), Spec(hist_def, HISTOGRAM, cumulative, (hist_attrs,), SINCE_START)]
    )
    for values in ([0, 1], [0.0, 1], [0, 1.5], [0, 1]):
        groups = [
            Group(gauge, GAUGE, 0, attrs, values, 5),
            Group(hist_def, HISTOGRAM, cumulative, (hist_attrs,), [Histogram()], 7),
        ]
        got = encoder.encode([(None, resource, layout, [*values, Histogram()])], 10**18, 7, 9)
        want = encode_metrics(MetricsData(resource_metrics=[_model(resource, groups, 10**18)]))
        assert got.message() == want
        assert got.points == count_points(want) == 3
