"""The agent's own exposition (otel_podnet.exporters.promtext) against what prometheus_client
wrote until issue 10 for the same snapshot: the collector the exporter used then is kept
here as the reference, rendered by prometheus_client's generate_latest (classic text) and
its OpenMetrics generate_latest. Byte for byte, in both formats and every name escaping;
then parsed by prometheus_client's parser and ``promtool check metrics``; the HTTP side
(Accept, Accept-Encoding, methods) against prometheus_client's WSGI application."""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest
from prometheus_client import exposition, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from otel_podnet import abi
from otel_podnet.exporters import ExportStats
from otel_podnet.exporters.prometheus import PrometheusExporter, negotiate
from otel_podnet.exporters.promtext import ESCAPINGS, Renderer, escape_name, go_float, label_name, prom_name
from otel_podnet.inventory import PodInfo
from otel_podnet.resources import node_attributes, pod_attributes
from otel_podnet.samples import Counters, Health, PodSample, Snapshot
from otel_podnet.series import (
    HEALTH_METRICS,
    HIST_BOUNDS_S,
    HISTOGRAM_METRICS,
    PEER_METRICS,
    POD_METRICS,
    health_series,
    peer_series,
    pod_histograms,
    pod_series,
)


class ReferenceCollector(Collector):
    """The exporter's collector before issue 10 (prometheus_client's families per scrape)."""

    def __init__(
        self, node: str, failures: int, extra: Mapping[str, str], snapshot: Snapshot, pods: Mapping[str, PodInfo]
    ) -> None:
        self.node, self.failures, self.extra, self.snapshot, self.pods = node, failures, extra, snapshot, pods

    def collect(self) -> Iterator[Any]:
        def labels(res: Mapping[str, str], attrs: Iterable[tuple[str, str]]) -> dict[str, str]:
            out = {label_name(k): v for k, v in res.items()}
            out.update({label_name(k): v for k, v in attrs})
            return out

        rows: list[Any] = []
        hist_rows: list[Any] = []
        for s in self.snapshot.samples:
            if s.uid is None:
                res = node_attributes(self.node, self.extra)
                rows += [(d, labels(res, a), v) for d, a, v in pod_series(s.counters)]
                rows += [(d, labels(res, a), v) for d, a, v in health_series(self.snapshot.health, self.failures)]
            else:
                res = pod_attributes(s.uid, self.pods.get(s.uid), self.node, self.extra)
                rows += [(d, labels(res, a), v) for d, a, v in pod_series(s.counters)]
            rows += [(d, labels(res, a), v) for d, a, v in peer_series(s.peers)]
            hist_rows += [(d, labels(res, a), h) for d, a, h in pod_histograms(s.counters)]
        for d in (*POD_METRICS, *PEER_METRICS, *HEALTH_METRICS):
            mine = [(lb, v) for md, lb, v in rows if md.name == d.name]
            if not mine:
                continue
            fam: Any = (CounterMetricFamily if d.monotonic else GaugeMetricFamily)(prom_name(d), d.description)
            for lb, v in mine:
                fam.add_sample(fam.name + ("_total" if d.monotonic else ""), lb, v)
            yield fam
        le = [floatToGoString(b) for b in HIST_BOUNDS_S] + ["+Inf"]  # type: ignore[no-untyped-call]
        for d in HISTOGRAM_METRICS:
            hists = [(lb, h) for md, lb, h in hist_rows if md.name == d.name]
            if not hists:
                continue
            hfam = Metric(prom_name(d), d.description, "histogram")
            for lb, h in hists:
                acc = 0
                for b, n in zip(le, h.buckets, strict=True):
                    acc += n
                    hfam.add_sample(hfam.name + "_bucket", {**lb, "le": b}, acc)
                hfam.add_sample(hfam.name + "_count", lb, acc)
                hfam.add_sample(hfam.name + "_sum", lb, h.sum_seconds)
            yield hfam


def registry(c: Collector) -> CollectorRegistry:
    # collectors without describe() also answer ?name[]=... (the exporter's registry did
    # not: its page was empty then; the agent now filters as prometheus_client does here)
    r = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    r.register(c)
    return r


NODE = "node-7"
PODS = {
    p.uid: p
    for p in (
        PodInfo("uid-web", "web-5d8f9c7b6-abcde", "shop", labels={"app.kubernetes.io/name": "web"},
                workload={"k8s.deployment.name": "web", "k8s.replicaset.name": "web-5d8f9c7b6"}),
        PodInfo("uid-db", "db-0", "data", workload={"k8s.statefulset.name": "db"},
                annotations={"resource.opentelemetry.io/service.version": 'v1 "beta"\nline2 \\ é',
                             "resource.opentelemetry.io/service.name": "db\\primary"}),
    )
}  # fmt: skip
HEALTH = Health(pods=3, slots_in_use=5, slots_capacity=4096, cgroups_tracked=7, cgroups_capacity=65536,
                slots_exhausted=1, cgroups_full=2, no_storage=3, collection_seconds=0.012345678,
                pod_ips_tracked=4, pod_ips_capacity=1024, pods_exhausted_cgroup=1, collection_failures=2,
                peer_rows_tracked=9, peer_rows_capacity=16384, peers_full=1)  # fmt: skip


def counters(seed: int) -> Counters:
    rnd = random.Random(seed)
    scalars = [rnd.choice([0, 1, 7, 999_999, 1_000_000, 123_456_789, 2**53 + 1, 10**17]) for _ in abi.COUNTER_FIELDS]
    hist = []
    for _ in abi.HISTOGRAMS:
        hist += [rnd.choice([0, 0, 0, 3, 500_000, 600_000]) for _ in range(abi.HIST_BUCKETS)]
        hist.append(rnd.choice([0, 21_000_000, 10**15 + 7]))  # the sum, ns
    return Counters.from_values(scalars + hist)


def peers(seed: int) -> tuple[tuple[tuple[tuple[str, str], ...], tuple[int, ...]], ...]:
    rnd = random.Random(seed)
    n = len(abi.PEER_FIELDS)
    return (
        ((("podnet.peer.kind", "pod"), ("podnet.peer.namespace", "data"), ("podnet.peer.workload", "db")),
         tuple(rnd.choice([0, 5, 2_000_000]) for _ in range(n))),
        ((("podnet.peer.kind", "external"),), tuple(rnd.choice([0, 9]) for _ in range(n))),
        ((("podnet.peer.kind", "other"),), (0,) * n),
    )  # fmt: skip


SNAPSHOT = Snapshot(
    (
        PodSample("uid-web", counters(1), peers=peers(1)),
        PodSample("uid-db", counters(2), peers=peers(2)),
        PodSample("uid-gone", counters(3)),  # known by its cgroup only
        PodSample(None, counters(4), peers=peers(4)),
    ),
    HEALTH,
)
EXTRA = {"k8s.cluster.name": 'prod "eu"', "deployment.environment": "a\\b\nc"}


def reference(extra: Mapping[str, str], escaping: str, openmetrics: bool, snapshot: Snapshot = SNAPSHOT) -> str:
    r = registry(ReferenceCollector(NODE, 3, extra, snapshot, PODS))
    if openmetrics:
        return om_exposition.generate_latest(r, escaping=escaping).decode()  # type: ignore[no-any-return]
    return exposition.generate_latest(r, escaping=escaping).decode()


def mine(extra: Mapping[str, str], escaping: Any, openmetrics: bool, snapshot: Snapshot = SNAPSHOT) -> str:
    renderer = Renderer(NODE, extra, escaping)
    renderer.render(snapshot, PODS, 3)  # the second render reuses the label strings
    out = renderer.render(snapshot, PODS, 3)
    return (out.openmetrics() if openmetrics else out.text()).decode()


@pytest.mark.parametrize("openmetrics", [False, True])
def test_same_bytes_as_prometheus_client(openmetrics: bool) -> None:
    expected = reference(EXTRA, "underscores", openmetrics)
    assert len(expected.splitlines()) > 400 and 'le="+Inf"' in expected
    assert mine(EXTRA, "underscores", openmetrics) == expected


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("escaping", ESCAPINGS)
def test_every_name_escaping(escaping: str, openmetrics: bool) -> None:
    """Attribute keys that are no legacy label names once dots became underscores (a leading
    digit, a leading ``__``), and one named ``le``, which the buckets' ``le`` replaces."""
    extra = {**EXTRA, "0zone": "z", "..hidden": "h", "le": "x", "service.name": "ignored"}
    expected = reference(extra, escaping, openmetrics)
    if escaping == "values" and openmetrics:
        # prometheus_client writes every OpenMetrics sample name in the values escaping
        # (U__podnet__tcp__...) where its HELP/TYPE lines and Prometheus' own escaping
        # leave legacy names as they are; the agent leaves them too.
        def unescaped(line: str) -> str:
            name, brace, rest = line.partition("{")
            return name.removeprefix("U__").replace("__", "_") + brace + rest

        expected = "\n".join(unescaped(ln) if ln.startswith("U__podnet") else ln for ln in expected.split("\n"))
    assert mine(extra, escaping, openmetrics) == expected


def test_empty_snapshot_and_no_snapshot() -> None:
    empty = Snapshot((), HEALTH)
    for om in (False, True):
        assert mine({}, "underscores", om, empty) == reference({}, "underscores", om, empty)
    exporter = PrometheusExporter(NODE, ExportStats(), ("127.0.0.1", 0))
    try:
        assert (exporter.metrics(), exporter.metrics(openmetrics=True)) == (b"", b"# EOF\n")
    finally:
        exporter.shutdown()


def test_values_as_go_prints_them() -> None:
    rnd = random.Random(7)
    ints = [0, 1, -1, 999_999, 1_000_000, 1_234_567, 10**15, 2**53 - 1, 2**53, 2**53 + 1, 10**16, 10**17 + 3, -(10**7)]
    ints += [rnd.randrange(10 ** rnd.randrange(1, 20)) for _ in range(2000)]
    floats = [
        0.0,
        -0.0,
        1e-05,
        1.5e-06,
        0.012345678,
        1234567.5,
        1e16,
        1.5e22,
        float("inf"),
        float("-inf"),
        float("nan"),
    ]
    floats += [rnd.random() * 10 ** rnd.randrange(-9, 18) for _ in range(2000)]
    for v in (*ints, *floats):
        assert go_float(v) == floatToGoString(v), v  # type: ignore[no-untyped-call]


def test_names_escaped_as_prometheus_client_does() -> None:
    for name in ("podnet_tcp_rtt_seconds", "0abc", "__x", "a.b", "a:b", "é_x", "_", "x\ny", 'q"'):
        for escaping in ESCAPINGS:
            for metric in (True, False):
                want = (om_exposition.escape_metric_name if metric else om_exposition.escape_label_name)(name, escaping)
                assert escape_name(name, escaping, metric) == want, (name, escaping, metric)


def test_parsed_as_prometheus_client_parses_it() -> None:
    text = mine(EXTRA, "underscores", False)
    families = list(text_string_to_metric_families(text))
    parsed = {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families for s in f.samples}
    assert len(parsed) == sum(1 for ln in text.splitlines() if not ln.startswith("#"))
    db = [s for s in parsed if s[0] == "podnet_tcp_retransmits_total" and ("k8s_pod_name", "db-0") in s[1]]
    assert len(db) == 1 and ("service_version", 'v1 "beta"\nline2 \\ é') in db[0][1]
    assert ("service_name", "db\\primary") in db[0][1] and ("k8s_cluster_name", 'prod "eu"') in db[0][1]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_metrics() -> None:
    """The classic text format (promtool's parser; it reads OpenMetrics' counters, HELP on the
    name without ``_total``, as having no help)."""
    text = mine(EXTRA, "underscores", False)
    run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    # promtool's lint: a problem is a line "name: text"; none expected (exit 0, nothing said)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", ""), (run.stdout, run.stderr)


# -- HTTP: the same negotiation and replies as prometheus_client's WSGI application -----------

PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
ACCEPTS = [
    None,
    "",
    "*/*",
    PROMETHEUS_3,
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",  # Prometheus 2
    "application/openmetrics-text",
    "application/openmetrics-text; version=0.0.1",
    "application/openmetrics-text; version=2.0.0; escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "text/plain;version=1.0.0;escaping=bogus",
    "text/plain;version=1.0",
    "text/plain; version=0.0.4, application/openmetrics-text; version=1.0.0",
    "application/json, text/plain;version=2",
]


def call(app: Callable[..., Iterable[bytes]], environ: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    got: list[Any] = []
    body = b"".join(app({"PATH_INFO": "/metrics", "QUERY_STRING": "", **environ}, lambda s, h: got.append((s, h))))
    return got[0][0], dict(got[0][1]), body


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[Callable[..., Iterable[bytes]], Callable[..., Iterable[bytes]]]]:
    """The agent's application and prometheus_client's, on the same snapshot."""
    stats = ExportStats(failures=3)
    exporter = PrometheusExporter(
        NODE, stats, ("127.0.0.1", 0), env={"OTEL_RESOURCE_ATTRIBUTES": "k8s.cluster.name=prod"}
    )
    try:
        exporter.export(SNAPSHOT, PODS)
        ref = make_wsgi_app(registry(ReferenceCollector(NODE, 3, {"k8s.cluster.name": "prod"}, SNAPSHOT, PODS)))
        yield exporter.app, ref
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("encoding", [None, "gzip", "deflate, GZIP;q=0.5", "br"])
def test_same_reply_as_prometheus_client(both: Any, accept: str | None, encoding: str | None) -> None:
    app, ref = both
    environ = {"REQUEST_METHOD": "GET"}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = encoding
    (status, headers, body), (rstatus, rheaders, rbody) = call(app, environ), call(ref, environ)
    assert (status, headers) == (rstatus, rheaders)
    if headers.get("Content-Encoding") == "gzip":
        body, rbody = gzip.decompress(body), gzip.decompress(rbody)
    assert body == rbody
    assert negotiate(accept).content_type == headers["Content-Type"]


@pytest.mark.parametrize(
    "environ",
    [
        {"REQUEST_METHOD": "OPTIONS"},
        {"REQUEST_METHOD": "POST"},
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/favicon.ico"},
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/anything"},
        {"REQUEST_METHOD": "GET", "QUERY_STRING": "name[]=podnet_tcp_rtt_seconds_count&name[]=podnet_agent_pods"},
        {"REQUEST_METHOD": "GET", "QUERY_STRING": "name[]=nothing"},
    ],
)
def test_other_requests_as_prometheus_client(both: Any, environ: dict[str, str]) -> None:
    app, ref = both
    assert call(app, environ) == call(ref, environ)


def test_a_new_snapshot_or_failure_count_is_a_new_page() -> None:
    stats = ExportStats()
    exporter = PrometheusExporter(NODE, stats, ("127.0.0.1", 0))
    try:
        exporter.export(SNAPSHOT, PODS)
        first = exporter.metrics()
        assert exporter.metrics() is first  # cached
        stats.failed()
        assert b'service_version="0.1.0"} 1.0\n# HELP podnet_agent_collection' in exporter.metrics()
        exporter.export(Snapshot(SNAPSHOT.samples[:1], HEALTH), PODS)
        assert b"db-0" in first and b"db-0" not in exporter.metrics()
    finally:
        exporter.shutdown()


def test_a_port_in_use_is_a_config_error() -> None:
    from otel_podnet.settings import ConfigError

    first = PrometheusExporter(NODE, ExportStats(), ("127.0.0.1", 0))
    try:
        port = first._server.server_address[1]
        with pytest.raises(ConfigError, match=rf"--prometheus-address 127.0.0.1:{port}: cannot listen \(Address"):
            PrometheusExporter(NODE, ExportStats(), ("127.0.0.1", port))
    finally:
        first.shutdown()
