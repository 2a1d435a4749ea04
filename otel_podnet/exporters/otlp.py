"""``--exporter otlp``: one OTLP export request per interval carrying every pod.

Design: the kernel already holds exact cumulative counters, so instead of one SDK
MeterProvider per pod (a provider binds exactly one Resource) with observable instruments
and a merge of their readers' output, this exporter builds the OTLP data model directly:
one ``ResourceMetrics`` per pod and one for the node, from the single snapshot of the
interval, handed to the SDK's OTLP exporter (gRPC or HTTP/protobuf, configured by the
standard ``OTEL_EXPORTER_OTLP_*`` variables) in one ``export()``. The points are what the
SDK would emit for an ObservableCounter (monotonic Sum) and an ObservableUpDownCounter
(non-monotonic Sum). There is nothing per pod to create or release beyond the delta state
below, so a departed pod leaves nothing behind once its final figures are out.

Exports run on one worker thread, always on the newest snapshot: a slow or absent
collector delays nothing else and no backlog grows. Cumulative figures after an outage are
exact by construction; in delta mode each delta is taken against the last value that was
*successfully* exported, so the deltas always add up to the truth.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from itertools import chain, repeat
from logging import getLogger
from operator import itemgetter
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import __version__
from ..abi import HIST_BUCKETS, HIST_WORDS, HISTOGRAMS
from ..inventory import PodInfo
from ..log import RateLimited
from ..resources import env_attributes, node_attributes, pod_attributes
from ..samples import Histogram as KernelHistogram
from ..samples import PodSample, Snapshot
from ..series import (
    HEALTH_METRICS,
    HIST_BOUNDS_S,
    HISTOGRAM_METRICS,
    PEER_METRICS,
    PEER_POINTS,
    POD_HISTOGRAMS,
    POD_METRICS,
    POD_SERIES,
    Attrs,
    MetricDef,
    health_series,
    pod_values,
)
from . import ExportStats
from .otlp_env import check_env, delta_preferred, protocol
from .otlp_proto import (
    GAUGE,
    HISTOGRAM,
    NO_START,
    SINCE_LAST,
    SINCE_START,
    SUM,
    ChannelPerExport,
    Group,
    GrpcExporter,
    Layout,
    RequestEncoder,
    Spec,
    http_exporter,
)

_logger = getLogger(__name__)
SCOPE = InstrumentationScope("otel_podnet", __version__)

SeriesKey = tuple[str | None, str, Attrs]
LaidOut = tuple[str | None, Attrs, Layout, list[Any]]  # an owner, its Resource, its points' layout and values


# At this interval and longer, OTLP/gRPC opens a channel per export (ChannelPerExport).
CHANNEL_PER_EXPORT_S = 5.0


def make_sdk_exporter(env: Mapping[str, str], interval: float = 10.0) -> MetricExporter:
    check_env(env)
    proto = protocol(env)
    if proto == "grpc":
        if interval >= CHANNEL_PER_EXPORT_S:
            return ChannelPerExport(GrpcExporter)
        return GrpcExporter()
    exporter: MetricExporter = http_exporter()
    return exporter


# Final samples of departed pods kept through a collector outage: beyond this, the oldest
# are dropped (their pods' last figures never reach the collector; a warning says so).
MAX_UNSENT_FINALS = 1024


class OtlpExporter:
    def __init__(
        self,
        node_name: str,
        stats: ExportStats,
        env: Mapping[str, str] | None = None,
        sdk_exporter: MetricExporter | None = None,
        max_unsent_finals: int = MAX_UNSENT_FINALS,
        interval: float = 10.0,
    ) -> None:
        env = os.environ if env is None else env
        self._sdk = sdk_exporter or make_sdk_exporter(env, interval)
        self._delta = delta_preferred(env)
        self._node = node_name
        self._extra = env_attributes(env)
        self._stats = stats
        self._start_ns = time.time_ns()
        self._last_ok_ns = self._start_ns
        self._last: dict[SeriesKey, float] = {}
        self._last_hist: dict[SeriesKey, KernelHistogram] = {}
        self._unsent_finals: dict[str, tuple[PodSample, PodInfo | None]] = {}
        self._resources: dict[str | None, tuple[PodInfo | None, Attrs]] = {}
        self._peer_layouts: dict[Any, list[Any]] = {}  # see _peer_groups
        self._hist_cache: dict[str | None, tuple[tuple[int, ...], list[KernelHistogram]]] = {}
        # laid_out()'s layouts, kept while the series stay the same
        self._pod_specs = [self._spec(d, attrs) for d, attrs, _, _ in _POD_LAYOUT]
        self._hist_specs = [self._spec(d, attrs, hist=True) for d, attrs, _ in _HIST_LAYOUT]
        self._peer_specs: dict[Any, tuple[list[Spec], list[int]]] = {}
        self._health_specs: dict[Any, tuple[list[Spec], list[int]]] = {}
        self._layouts: dict[tuple[Any, Any], Layout] = {}
        # the SDK's own exporters take the request built directly (otlp_proto); another
        # MetricExporter (a test's, the console's) gets the SDK's data model
        self._encoder = None
        if getattr(self._sdk, "accepts_request", False):
            self._encoder = RequestEncoder(SCOPE.name, SCOPE.version or "")
        self._max_unsent_finals = max_unsent_finals
        self.finals_dropped = 0
        self._log = RateLimited(_logger, 60.0)
        self._cond = threading.Condition()
        self._pending: tuple[Snapshot, dict[str, PodInfo], int] | None = None
        self._busy = False
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._worker.start()

    # -- the agent's side ----------------------------------------------------------------------

    def export(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        """Hand over the newest snapshot; the worker exports it when it is free."""
        with self._cond:
            if self._pending is not None:
                # The collector is slower than the interval: merge the finals of the snapshot
                # we are replacing, the rest is contained in the newer one.
                self._keep_finals(self._pending[0], self._pending[1])
            self._pending = (snapshot, dict(pods), time.time_ns())
            self._cond.notify()

    def shutdown(self) -> None:
        """Export what is pending (the final snapshot), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._worker.join(timeout=30)
        self._sdk.shutdown()

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._pending is None:
                    return
                snapshot, pods, now_ns = self._pending
                self._pending = None
            self._export_one(snapshot, pods, now_ns)

    def _keep_finals(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        for s in snapshot.samples:
            if s.final and s.uid:
                self._unsent_finals[s.uid] = (s, pods.get(s.uid))
        while len(self._unsent_finals) > self._max_unsent_finals:  # bounded: drop the oldest
            del self._unsent_finals[next(iter(self._unsent_finals))]
            self.finals_dropped += 1
            self._log.warning(
                "collector unreachable for long: final figures of %d departed pods dropped (%d kept)",
                self.finals_dropped,
                self._max_unsent_finals,
            )

    def _export_one(self, snapshot: Snapshot, pods: dict[str, PodInfo], now_ns: int) -> None:
        samples = list(snapshot.samples)
        have = {s.uid for s in samples}
        for uid, (s, info) in list(self._unsent_finals.items()):
            if uid not in have:
                samples.append(s)
                if info is not None:
                    pods.setdefault(uid, info)
        data: Any
        if self._encoder is not None:
            laid, values, hists = self.laid_out(samples, snapshot, pods)
            data = self._encoder.encode(laid, now_ns, self._start_ns, self._last_ok_ns)
        else:
            data, values, hists = self.build(samples, snapshot, pods, now_ns)
        try:
            result = self._sdk.export(data)
        except Exception as exc:  # a broken exporter must not stop the agent
            result = MetricExportResult.FAILURE
            _logger.debug("OTLP export raised", exc_info=exc)
        if result == MetricExportResult.SUCCESS:
            # Every live pod is in every snapshot, so what was just exported is all the
            # delta state needed: a pod that left (with or without a final sample) and the
            # pods whose final this was leave nothing behind.
            finals = {s.uid for s in samples if s.final and s.uid}
            self._last = {k: v for k, v in values.items() if k[0] not in finals}
            self._last_hist = {k: v for k, v in hists.items() if k[0] not in finals}
            self._last_ok_ns = now_ns
            for uid in finals:
                self._unsent_finals.pop(uid, None)
        else:
            self._stats.failed()
            self._keep_finals(Snapshot(tuple(samples), snapshot.health), pods)
            self._log.warning(
                "OTLP export failed; counting goes on in the kernel and the next export carries the totals"
            )

    # -- the data model ---------------------------------------------------------------------------

    def owners(
        self, samples: list[PodSample], snapshot: Snapshot, pods: Mapping[str, PodInfo]
    ) -> tuple[list[tuple[str | None, Attrs, list[Group]]], dict[SeriesKey, float], dict[SeriesKey, KernelHistogram]]:
        """Per owner (a pod's UID, None for the node): its Resource attributes and metrics,
        the points' values as they go out (deltas in delta mode); and, in delta mode, the
        cumulative values, which become the delta state once the export succeeded."""
        values: dict[SeriesKey, float] = {}
        hists: dict[SeriesKey, KernelHistogram] = {}
        out = []
        for s in samples:
            owner = s.uid
            groups = self._pod_groups(owner, s, values)
            if s.peers:
                groups += self._peer_groups(owner, s.peers, values)
            groups += self._histograms(owner, s, hists)
            if owner is None:
                health = health_series(snapshot.health, self._stats.failures)
                groups += self._numbers(None, HEALTH_METRICS, health, values)
            out.append((owner, self._resource(owner, pods.get(owner) if owner else None), groups))
        if len(self._resources) > len(out):  # owners that left leave nothing behind
            seen = {owner for owner, _, _ in out}
            self._resources = {k: v for k, v in self._resources.items() if k in seen}
            self._hist_cache = {k: v for k, v in self._hist_cache.items() if k in seen}
        return out, values, hists

    def laid_out(
        self, samples: list[PodSample], snapshot: Snapshot, pods: Mapping[str, PodInfo]
    ) -> tuple[
        list[tuple[str | None, Attrs, Layout, list[Any]]], dict[SeriesKey, float], dict[SeriesKey, KernelHistogram]
    ]:
        """What ``owners()`` gives, for the request encoder: per owner its Resource
        attributes, its Layout (kept while its series stay the same) and its points' values
        in one list, made of whole tuples at a time rather than point by point (issue 10).
        ``owners()`` stays the plain statement of the same points: the SDK's data model is
        made from it, and tests/unit/test_otlp_proto.py checks that the two agree."""
        values: dict[SeriesKey, float] = {}
        hists: dict[SeriesKey, KernelHistogram] = {}
        last, last_hist, zero = self._last, self._last_hist, KernelHistogram()
        out = []
        for s in samples:
            owner = s.uid
            vals: list[Any] = list(pod_values(s.counters))
            peer_key = health_key = None
            peers = s.peers
            if peers:
                peer_key = tuple([(a, tuple(map(bool, v))) for a, v in peers])
                peer_specs, at = self._peer_parts(peer_key, peers)
                flat = list(chain.from_iterable([v for _, v in peers]))
                vals += [flat[at[0]]] if len(at) == 1 else itemgetter(*at)(flat)
            hs = self._histogram_values(owner, s.counters.hist)
            vals += itemgetter(*_HIST_AT)(hs)
            if owner is None:
                health = list(health_series(snapshot.health, self._stats.failures))
                health_key = tuple([(md.name, a) for md, a, _ in health])
                health_specs, order = self._health_parts(health_key, health)
                vals += [health[i][2] for i in order]
            layout = self._layouts.get((peer_key, health_key))
            if layout is None:
                if len(self._layouts) >= 4096:  # bounded: peers come and go
                    self._layouts.clear()
                specs = list(self._pod_specs)
                if peer_key is not None:
                    specs += peer_specs
                specs += self._hist_specs
                if health_key is not None:
                    specs += health_specs
                layout = self._layouts[(peer_key, health_key)] = Layout(specs)
            if layout.delta_at:  # delta: against the last exported value, the new one kept
                series = layout.series
                for i in layout.delta_at:
                    key: SeriesKey = (owner, *series[i])
                    v = vals[i]
                    if isinstance(v, KernelHistogram):
                        hists[key] = v
                        vals[i] = v - last_hist.get(key, zero)
                    else:
                        values[key] = v
                        vals[i] = v - last.get(key, 0)
            out.append((owner, self._resource(owner, pods.get(owner) if owner else None), layout, vals))
        if len(self._resources) > len(out):  # owners that left leave nothing behind
            seen = {owner for owner, _, _, _ in out}
            self._resources = {k: v for k, v in self._resources.items() if k in seen}
            self._hist_cache = {k: v for k, v in self._hist_cache.items() if k in seen}
        return out, values, hists

    def _spec(self, d: MetricDef, attrs: tuple[Attrs, ...], hist: bool = False) -> Spec:
        """How ``_group()`` and ``_histograms()`` send a metric's points."""
        if d.gauge:
            return Spec(d, GAUGE, 0, attrs, NO_START)
        if self._delta and (d.monotonic or hist):
            return Spec(d, HISTOGRAM if hist else SUM, AggregationTemporality.DELTA, attrs, SINCE_LAST)
        return Spec(d, HISTOGRAM if hist else SUM, AggregationTemporality.CUMULATIVE, attrs, SINCE_START)

    def _peer_parts(self, key: Any, peers: tuple[tuple[Attrs, tuple[int, ...]], ...]) -> tuple[list[Spec], list[int]]:
        """The peer metrics and, per point, its value's place in the peers' figures laid end
        to end (as ``_peer_groups()`` picks them)."""
        parts = self._peer_specs.get(key)
        if parts is None:
            if len(self._peer_specs) >= 4096:  # bounded: peers come and go
                self._peer_specs.clear()
            layout = _peer_layout(peers)
            at = [i * len(PEER_POINTS) + j for _, _, points in layout for i, j in points]
            parts = self._peer_specs[key] = ([self._spec(d, attrs) for d, attrs, _ in layout], at)
        return parts

    def _health_parts(self, key: Any, health: list[tuple[MetricDef, Attrs, Any]]) -> tuple[list[Spec], list[int]]:
        """The health metrics and, per point, its place in ``health_series()`` (grouped by
        metric in HEALTH_METRICS order, as ``_numbers()`` does)."""
        parts = self._health_specs.get(key)
        if parts is None:
            grouped = _grouped([(md, a, i) for i, (md, a, _) in enumerate(health)], HEALTH_METRICS)
            order = [i for _, _, at in grouped for i in at]
            parts = self._health_specs[key] = ([self._spec(d, attrs) for d, attrs, _ in grouped], order)
        return parts

    def _resource(self, uid: str | None, info: PodInfo | None) -> Attrs:
        """The owner's Resource attributes, kept while its PodInfo stays the same."""
        cached = self._resources.get(uid)
        if cached is not None and (cached[0] is info or cached[0] == info):
            return cached[1]
        if uid is None:
            attrs = node_attributes(self._node, self._extra)
        else:
            attrs = pod_attributes(uid, info, self._node, self._extra)
        res = tuple(attrs.items())
        self._resources[uid] = (info, res)
        return res

    def build(
        self, samples: list[PodSample], snapshot: Snapshot, pods: Mapping[str, PodInfo], now_ns: int
    ) -> tuple[MetricsData, dict[SeriesKey, float], dict[SeriesKey, KernelHistogram]]:
        """The interval's export as the SDK's data model (for an exporter given as such)."""
        owners, values, hists = self.owners(samples, snapshot, pods)
        return MetricsData(resource_metrics=[_model(r, g, now_ns) for _, r, g in owners]), values, hists

    def _group(
        self, owner: str | None, d: MetricDef, attrs: tuple[Attrs, ...], values: Any, state: dict[SeriesKey, float]
    ) -> Group:
        """One metric's points as they go out: in delta mode a monotonic series' delta
        against its last exported value (its cumulative value into ``state``)."""
        if d.gauge:
            return Group(d, GAUGE, 0, attrs, values, self._start_ns)
        if self._delta and d.monotonic:
            last = self._last
            deltas = []
            for a, v in zip(attrs, values, strict=True):
                key: SeriesKey = (owner, d.name, a)
                state[key] = v
                deltas.append(v - last.get(key, 0))
            return Group(d, SUM, AggregationTemporality.DELTA, attrs, deltas, self._last_ok_ns)
        return Group(d, SUM, AggregationTemporality.CUMULATIVE, attrs, values, self._start_ns)

    def _pod_groups(self, owner: str | None, s: PodSample, state: dict[SeriesKey, float]) -> list[Group]:
        """The pod series (series.POD_SERIES), their layout fixed: one call reads the values."""
        v = pod_values(s.counters)
        return [self._group(owner, d, attrs, v[lo:hi], state) for d, attrs, lo, hi in _POD_LAYOUT]

    def _peer_groups(
        self, owner: str | None, peers: tuple[tuple[Attrs, tuple[int, ...]], ...], state: dict[SeriesKey, float]
    ) -> list[Group]:
        """The peer series (series.peer_series: a point where a figure is not zero), by
        metric in PEER_METRICS order; the layout is kept per peers and non-zero figures."""
        key = tuple([(a, tuple(map(bool, v))) for a, v in peers])
        layout = self._peer_layouts.get(key)
        if layout is None:
            if len(self._peer_layouts) >= 4096:  # bounded: peers come and go
                self._peer_layouts.clear()
            layout = self._peer_layouts[key] = _peer_layout(peers)
        return [self._group(owner, d, attrs, [peers[i][1][j] for i, j in at], state) for d, attrs, at in layout]

    def _histograms(self, owner: str | None, s: PodSample, hists: dict[SeriesKey, KernelHistogram]) -> list[Group]:
        """The latency histograms, as the SDK would emit an explicit-bucket Histogram: the
        kernel's buckets are the OTLP buckets (upper bounds inclusive), count and sum exact.
        min and max are not known: None, which the encoder leaves unset (they are optional
        in OTLP), rather than a made-up value."""
        out = []
        hs_all = self._histogram_values(owner, s.counters.hist)
        for d, attrs, at in _HIST_LAYOUT:
            hs = [hs_all[i] for i in at]
            if self._delta:
                for i, a in enumerate(attrs):
                    key: SeriesKey = (owner, d.name, a)
                    hists[key] = hs[i]
                    hs[i] = hs[i] - self._last_hist.get(key, KernelHistogram())
                out.append(Group(d, HISTOGRAM, AggregationTemporality.DELTA, attrs, hs, self._last_ok_ns))
            else:
                out.append(Group(d, HISTOGRAM, AggregationTemporality.CUMULATIVE, attrs, hs, self._start_ns))
        return out

    def _histogram_values(self, owner: str | None, hist: tuple[int, ...]) -> list[KernelHistogram]:
        """The owner's histograms (abi.HISTOGRAMS order, as Counters.histogram makes them);
        one that did not change since the last interval is the same object (the request
        skips it by identity)."""
        cached = self._hist_cache.get(owner)
        if cached is not None and cached[0] == hist:
            return cached[1]
        hs = [KernelHistogram(hist[o : o + HIST_BUCKETS], hist[o + HIST_BUCKETS]) for o in _HIST_OFFSETS]
        if cached is not None:
            hs = [
                old if old.sum_ns == new.sum_ns and old.buckets == new.buckets else new
                for old, new in zip(cached[1], hs, strict=True)
            ]
        self._hist_cache[owner] = (hist, hs)
        return hs

    def _numbers(
        self,
        owner: str | None,
        defs: tuple[MetricDef, ...],
        points: Iterable[tuple[MetricDef, Attrs, Any]],
        values: dict[SeriesKey, float],
    ) -> list[Group]:
        """Points grouped by metric in ``defs`` order (the node's health series)."""
        by_metric: dict[str, tuple[list[Attrs], list[Any]]] = {}
        for md, attrs, value in points:
            mine = by_metric.get(md.name)
            if mine is None:
                mine = by_metric[md.name] = ([], [])
            mine[0].append(attrs)
            mine[1].append(value)
        return [
            self._group(owner, d, tuple(by_metric[d.name][0]), by_metric[d.name][1], values)
            for d in defs
            if d.name in by_metric
        ]


def _grouped(points: list[tuple[MetricDef, Attrs, Any]], defs: tuple[MetricDef, ...]) -> list[Any]:
    """(metric, the points' attributes, what each point's value is) by metric in ``defs`` order."""
    return [
        (d, tuple(a for md, a, _ in points if md is d), [x for md, _, x in points if md is d])
        for d in defs
        if any(md is d for md, _, _ in points)
    ]


def _pod_layout() -> list[tuple[MetricDef, tuple[Attrs, ...], int, int]]:
    out = []
    for d, attrs, at in _grouped([(md, a, i) for i, (md, a, _) in enumerate(POD_SERIES)], POD_METRICS):
        assert at == list(range(at[0], at[-1] + 1))  # POD_SERIES lists a metric's series together
        out.append((d, attrs, at[0], at[-1] + 1))
    return out


def _peer_layout(peers: tuple[tuple[Attrs, tuple[int, ...]], ...]) -> list[Any]:
    points = [
        (md, a + attrs, (i, j))
        for i, (attrs, v) in enumerate(peers)
        for j, ((md, a), x) in enumerate(zip(PEER_POINTS, v, strict=True))
        if x
    ]
    return _grouped(points, PEER_METRICS)


def _hist_layout() -> list[Any]:
    return _grouped([(d, a, HISTOGRAMS.index(name)) for d, a, name in POD_HISTOGRAMS], HISTOGRAM_METRICS)


_HIST_OFFSETS = [i * HIST_WORDS for i in range(len(HISTOGRAMS))]
_POD_LAYOUT = _pod_layout()
_HIST_LAYOUT = _hist_layout()
_HIST_AT = [i for _, _, at in _HIST_LAYOUT for i in at]  # the histograms in the order they go out
# laid_out() takes a pod's values as pod_values() gives them: the metrics' ranges in order
assert [lo for _, _, lo, _ in _POD_LAYOUT] == [0, *(hi for _, _, _, hi in _POD_LAYOUT[:-1])]
assert _POD_LAYOUT[-1][3] == len(POD_SERIES)


def _model(resource: Attrs, groups: list[Group], now_ns: int) -> ResourceMetrics:
    """One owner's ResourceMetrics in the SDK's data model: what its reader would emit for
    an ObservableCounter (monotonic Sum), an ObservableUpDownCounter (non-monotonic Sum), a
    gauge and an explicit-bucket Histogram."""
    metrics = []
    for g in groups:
        d = g.d
        data: Any
        if g.kind == HISTOGRAM:
            hdps = [
                HistogramDataPoint(
                    attributes=dict(attrs),
                    start_time_unix_nano=start,
                    time_unix_nano=now_ns,
                    count=h.count,
                    sum=h.sum_seconds,
                    bucket_counts=list(h.buckets),
                    explicit_bounds=list(HIST_BOUNDS_S),
                    min=None,  # type: ignore[arg-type]
                    max=None,  # type: ignore[arg-type]
                )
                for attrs, h, start in zip(g.attrs, g.values, repeat(g.start))
            ]
            data = Histogram(data_points=hdps, aggregation_temporality=AggregationTemporality(g.temporality))
        else:
            dps = [
                NumberDataPoint(attributes=dict(attrs), start_time_unix_nano=start, time_unix_nano=now_ns, value=v)
                for attrs, v, start in zip(g.attrs, g.values, repeat(g.start))
            ]
            if g.kind == GAUGE:
                data = Gauge(data_points=dps)
            else:
                data = Sum(
                    data_points=dps,
                    aggregation_temporality=AggregationTemporality(g.temporality),
                    is_monotonic=d.monotonic,
                )
        metrics.append(Metric(name=d.name, description=d.description, unit=d.unit, data=data))
    return ResourceMetrics(
        resource=Resource(dict(resource)),
        scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")],
        schema_url="",
    )
