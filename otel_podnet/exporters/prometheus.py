"""``--exporter prometheus``: ``/metrics`` with one series per pod and attribute set.

The SDK's Prometheus reader serves one Resource only, so this renders the newest snapshot
with prometheus_client directly: the Resource attributes become labels (``k8s_pod_name``,
``k8s_namespace_name``, ...) next to the point attributes, and names are converted as the
OpenTelemetry-to-Prometheus rules do (unit suffix, ``_total`` for monotonic sums).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator, Mapping
from logging import getLogger
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..inventory import PodInfo
from ..resources import env_attributes, node_attributes, pod_attributes
from ..samples import Histogram, Snapshot
from ..series import (
    HEALTH_METRICS,
    HIST_BOUNDS_S,
    HISTOGRAM_METRICS,
    PEER_METRICS,
    POD_METRICS,
    Attrs,
    MetricDef,
    health_series,
    peer_series,
    pod_histograms,
    pod_series,
)
from . import ExportStats

_logger = getLogger(__name__)

_UNITS = {"By": "bytes", "s": "seconds"}


def prom_name(d: MetricDef) -> str:
    base = re.sub(r"[^a-zA-Z0-9_]", "_", d.name)
    unit = _UNITS.get(d.unit, "")  # annotations such as {connection} are dropped
    return f"{base}_{unit}" if unit else base


@functools.lru_cache(maxsize=4096)  # attribute keys: a few dozen, converted ~25,000 times per scrape
def label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


class _SnapshotCollector(Collector):
    def __init__(self, node_name: str, stats: ExportStats, extra: Mapping[str, str]) -> None:
        self._node = node_name
        self._stats = stats
        self._extra = extra
        self._lock = threading.Lock()
        self._latest: tuple[Snapshot, dict[str, PodInfo]] | None = None

    def update(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        with self._lock:
            self._latest = (snapshot, dict(pods))

    def collect(self) -> Iterator[Any]:
        with self._lock:
            latest = self._latest
        if latest is None:
            return
        snapshot, pods = latest
        rows: list[tuple[MetricDef, dict[str, str], float]] = []
        hist_rows: list[tuple[MetricDef, dict[str, str], Histogram]] = []
        for s in snapshot.samples:
            if s.uid is None:
                res = node_attributes(self._node, self._extra)
                rows += [(d, _labels(res, a), v) for d, a, v in pod_series(s.counters)]
                rows += [(d, _labels(res, a), v) for d, a, v in health_series(snapshot.health, self._stats.failures)]
            else:
                res = pod_attributes(s.uid, pods.get(s.uid), self._node, self._extra)
                rows += [(d, _labels(res, a), v) for d, a, v in pod_series(s.counters)]
            rows += [(d, _labels(res, a), v) for d, a, v in peer_series(s.peers)]  # peers (issue 12)
            hist_rows += [(d, _labels(res, a), h) for d, a, h in pod_histograms(s.counters)]
        by_metric: dict[str, list[tuple[dict[str, str], float]]] = {}
        for md, labels, v in rows:
            by_metric.setdefault(md.name, []).append((labels, v))
        for d in (*POD_METRICS, *PEER_METRICS, *HEALTH_METRICS):
            mine = by_metric.get(d.name)
            if not mine:
                continue
            fam: Any
            if d.monotonic:
                fam = CounterMetricFamily(prom_name(d), d.description, labels=None)
            else:
                fam = GaugeMetricFamily(prom_name(d), d.description, labels=None)
            for labels, v in mine:
                fam.add_sample(fam.name + ("_total" if d.monotonic else ""), labels, v)
            yield fam
        yield from _histogram_families(hist_rows)


_LE = [floatToGoString(b) for b in HIST_BOUNDS_S] + ["+Inf"]  # type: ignore[no-untyped-call]


def _histogram_families(rows: list[tuple[MetricDef, dict[str, str], Histogram]]) -> Iterator[Metric]:
    """Classic Prometheus histograms, as the OpenTelemetry conversion makes them from an
    explicit-bucket Histogram: ``<name>_bucket{le=...}`` cumulative over the buckets,
    ``_sum`` in seconds and ``_count``."""
    for d in HISTOGRAM_METRICS:
        mine = [(labels, h) for md, labels, h in rows if md.name == d.name]
        if not mine:
            continue
        fam = Metric(prom_name(d), d.description, "histogram")
        for labels, h in mine:
            acc = 0
            for le, n in zip(_LE, h.buckets, strict=True):
                acc += n
                fam.add_sample(fam.name + "_bucket", {**labels, "le": le}, acc)
            fam.add_sample(fam.name + "_count", labels, acc)
            fam.add_sample(fam.name + "_sum", labels, h.sum_seconds)
        yield fam


def _labels(resource: Mapping[str, str], attrs: Attrs) -> dict[str, str]:
    out = {label_name(k): v for k, v in resource.items()}
    out.update({label_name(k): v for k, v in attrs})
    return out


class PrometheusExporter:
    def __init__(
        self, node_name: str, stats: ExportStats, address: tuple[str, int], env: Mapping[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _SnapshotCollector(node_name, stats, env_attributes(env))
        self.registry.register(self._collector)
        host, port = address
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            from ..settings import ConfigError

            raise ConfigError(f"--prometheus-address {host}:{port}: cannot listen ({exc.strerror})") from exc
        _logger.info("Prometheus /metrics on %s:%d", host, port)

    def export(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None:
        self._collector.update(snapshot, pods)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
