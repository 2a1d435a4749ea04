"""The OTLP export request built directly as protobuf, reused from one interval to the next.

The SDK's ``encode_metrics()`` turns its data model into an ``ExportMetricsServiceRequest``
anew for every export: a Python object per point, then a protobuf message per point and per
attribute. At 110 pods that is ~3,700 points and two thirds of the agent's CPU per
interval (bench/README.md, issue 10). What changes between intervals is only the points'
values and times: the Resources, the metrics' names, units and kinds, and the points'
attribute sets stay as long as the pods and their series do. So each owner's
``ResourceMetrics`` message is built once per *shape* (Resource attributes, metrics, point
attribute sets, temporality) and kept; an interval sets the values and times of its points
and copies the messages into the request.

The request is the one ``encode_metrics()`` makes of ``OtlpExporter.build()``'s data
(tests/unit/test_otlp_proto.py compares them), and it goes out through the SDK's own OTLP
exporters (gRPC or HTTP/protobuf: endpoint, headers, TLS, compression, timeout, retries as
the standard variables set them), subclassed here only to take the request ready-made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as _Grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

from ..samples import Histogram as KernelHistogram
from ..series import HIST_BOUNDS_S, Attrs, MetricDef

SUM, GAUGE, HISTOGRAM = 0, 1, 2
HIST_BOUNDS = list(HIST_BOUNDS_S)


class Group(NamedTuple):
    """One metric of one owner: its points' attributes and values, and their start time.
    ``attrs`` is kept from one interval to the next while the series stay the same (the
    shape compares it by identity first); only ``values`` is made per interval."""

    d: MetricDef
    kind: int  # SUM, GAUGE or HISTOGRAM
    temporality: int  # AggregationTemporality's value
    attrs: tuple[Attrs, ...]
    values: Sequence[Any]  # int, float or a KernelHistogram per point
    start: int  # the points' start time (unset for a gauge)


def _key_values(attrs: Sequence[tuple[str, str]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs]


class _Template:
    """One owner's ResourceMetrics of one shape, and its points in order."""

    __slots__ = ("last", "message", "points", "shape", "starts")

    def __init__(self, shape: tuple[Any, ...], resource: Attrs, groups: list[Group], scope: InstrumentationScope):
        self.shape = shape
        metrics = []
        for g in groups:
            m = pb.Metric(name=g.d.name, description=g.d.description, unit=g.d.unit)
            for attrs in g.attrs:
                kv = _key_values(attrs)
                if g.kind == HISTOGRAM:
                    m.histogram.data_points.add(attributes=kv, explicit_bounds=HIST_BOUNDS)
                elif g.kind == GAUGE:
                    m.gauge.data_points.add(attributes=kv)
                else:
                    m.sum.data_points.add(attributes=kv)
            if g.kind == HISTOGRAM:
                m.histogram.aggregation_temporality = g.temporality  # type: ignore[assignment]
            elif g.kind == SUM:
                m.sum.aggregation_temporality = g.temporality  # type: ignore[assignment]
                m.sum.is_monotonic = g.d.monotonic
            metrics.append(m)
        self.message = pb.ResourceMetrics(
            resource=Resource(attributes=_key_values(resource)),
            scope_metrics=[pb.ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
            schema_url="",
        )
        self.points: list[Any] = []
        # what the points hold now (None: not set yet): a value or start time that did not
        # change is not set again (most of a pod's series do not move in an interval)
        self.last: list[Any] = []
        self.starts: list[int | None] = [None] * len(groups)

    def place(self, request: ExportMetricsServiceRequest) -> None:
        """Into ``request`` (a copy), then the template is that copy: later intervals set
        its points where they are, in the request."""
        request.resource_metrics.append(self.message)
        self.message = request.resource_metrics[len(request.resource_metrics) - 1]
        self.points = []  # references into the message, in the order fill() walks them
        for m in self.message.scope_metrics[0].metrics:
            data = m.histogram if m.HasField("histogram") else m.gauge if m.HasField("gauge") else m.sum
            self.points.extend(data.data_points)
        if len(self.last) != len(self.points):
            self.last = [None] * len(self.points)

    def fill(self, groups: list[Group], now_ns: int) -> None:
        dps, last, starts = self.points, self.last, self.starts
        i = 0
        for gi, g in enumerate(groups):
            start = g.start
            new_start = g.kind != GAUGE and starts[gi] != start
            if new_start:
                starts[gi] = start
            if g.kind == HISTOGRAM:
                for h in g.values:
                    dp = dps[i]
                    assert isinstance(h, KernelHistogram)
                    if new_start:
                        dp.start_time_unix_nano = start
                    dp.time_unix_nano = now_ns
                    if h is not last[i] and h != last[i]:
                        last[i] = h
                        dp.count = h.count
                        dp.sum = h.sum_seconds
                        dp.bucket_counts[:] = h.buckets
                    i += 1
            else:
                for v in g.values:
                    dp = dps[i]
                    if new_start:
                        dp.start_time_unix_nano = start
                    dp.time_unix_nano = now_ns
                    was = last[i]
                    if v != was or type(v) is not type(was):  # 0 == 0.0, but as_int is not as_double
                        last[i] = v
                        if isinstance(v, int):
                            dp.as_int = v
                        else:
                            dp.as_double = v
                    i += 1


class RequestEncoder:
    """``encode(owners)`` -> the request. The request itself is kept: while the owners and
    their shapes stay the same, an interval only sets the points' values and times in it
    (the SDK exporter has sent it before the next interval's ``encode``); when they
    change, a new request is made of the owners' templates, new ones built."""

    def __init__(self, scope_name: str, scope_version: str) -> None:
        self._scope = InstrumentationScope(name=scope_name, version=scope_version)
        self._templates: dict[str | None, _Template] = {}
        self._shapes: list[tuple[str | None, tuple[Any, ...]]] = []
        self._request = ExportMetricsServiceRequest()
        self._points = 0

    def encode(self, owners: list[tuple[str | None, Attrs, list[Group]]], now_ns: int) -> ExportMetricsServiceRequest:
        shapes = [
            (owner, (resource, tuple([(g.d.name, g.temporality, g.attrs) for g in groups])))
            for owner, resource, groups in owners
        ]
        if shapes != self._shapes:
            request = ExportMetricsServiceRequest()
            kept: dict[str | None, _Template] = {}
            for (owner, shape), (_, resource, groups) in zip(shapes, owners, strict=True):
                t = self._templates.get(owner)
                if t is None or t.shape != shape:
                    t = _Template(shape, resource, groups, self._scope)
                t.place(request)
                kept[owner] = t
            self._templates = kept  # owners that left leave nothing behind
            self._shapes = shapes
            self._request = request
            self._points = sum(len(t.points) for t in kept.values())
        for owner, _, groups in owners:
            self._templates[owner].fill(groups, now_ns)
        _counted[:] = [self._request, self._points]
        return self._request


_counted: list[Any] = [None, 0]  # the last request encode() made and its number of points


def count_points(request: ExportMetricsServiceRequest) -> int:
    if _counted[0] is request:
        n: int = _counted[1]
        return n
    n = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                n += len(getattr(m, kind).data_points) if kind else 0
    return n


class GrpcExporter(_Grpc):
    """The SDK's OTLP/gRPC metric exporter, also taking a ready-made request."""

    @property
    def accepts_request(self) -> bool:
        return getattr(self, "_max_export_batch_size", None) is None

    def _translate_data(self, data: Any) -> ExportMetricsServiceRequest:
        if isinstance(data, ExportMetricsServiceRequest):
            return data
        return super()._translate_data(data)

    def _count_data(self, data: Any) -> int:
        if isinstance(data, ExportMetricsServiceRequest):
            return count_points(data)
        n: int = super()._count_data(data)
        return n


class ChannelPerExport(MetricExporter):
    """The OTLP/gRPC exporter with a channel of its own for each export (issue 10).

    While a gRPC channel exists, gRPC's own threads (its event engine's workers, timer and
    lifeguard) wake up on timers of their own: an idle channel to the Collector costs 7 to
    10 ms of CPU per 10 s here (bench/grpc_floor.py), about half of the agent's whole
    budget. With no channel left they exit. A channel per export costs a connection (and a
    TLS handshake where there is TLS) per interval instead: 4 ms per 10 s with the
    exporter built anew each time, against 7.5 to 9.3 ms for one channel kept open
    (alternated, same Collector). So at intervals of 5 s or more (the default is 10 s) the
    agent uses this; at shorter ones it keeps one exporter. A new connection per export
    also lets an L4 load balancer (a Service in front of several Collectors) spread the
    nodes' exports, which one long-lived connection per node does not.

    Each export is the SDK's exporter as configured by the standard variables (endpoint,
    headers, TLS, compression, timeout, retries within the export), built, used once and
    shut down, which closes its channel."""

    def __init__(self, make: Callable[[], GrpcExporter]) -> None:
        super().__init__()
        self._make = make
        probe = make()  # the configuration's errors now, not at the first export
        try:
            self._accepts = probe.accepts_request
        finally:
            probe.shutdown()
        self._shutdown = False

    @property
    def accepts_request(self) -> bool:
        return self._accepts

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._shutdown:
            return MetricExportResult.FAILURE
        exporter = self._make()
        try:
            result: MetricExportResult = exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            return result
        finally:
            exporter.shutdown()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._shutdown = True


def http_exporter() -> Any:
    """The SDK's OTLP/HTTP metric exporter, also taking a ready-made request where this SDK
    version sends one request through ``_export_batch``."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as _Http

    class HttpExporter(_Http):
        @property
        def accepts_request(self) -> bool:
            return hasattr(self, "_export_batch") and getattr(self, "_max_export_batch_size", None) is None

        def export(self, metrics_data: Any, timeout_millis: float | None = 10000, **kwargs: Any) -> MetricExportResult:
            if not isinstance(metrics_data, ExportMetricsServiceRequest):
                return super().export(metrics_data, timeout_millis, **kwargs)
            if self._shutdown:
                return MetricExportResult.FAILURE
            result: MetricExportResult = self._export_batch(metrics_data)
            return result

    return HttpExporter()
