"""``otel-podnet top``: the table from two readings with known figures, read from /metrics as
the agent's real Prometheus exporter writes it; ``--once`` against that exporter serving over
HTTP; bad --from values."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from otel_podnet import cli
from otel_podnet.exporters import ExportStats
from otel_podnet.exporters.prometheus import PrometheusExporter
from otel_podnet.inventory import PodInfo
from otel_podnet.samples import Counters, Health, PodSample, Snapshot
from otel_podnet.top import Reading, parse_metrics, render, rows

WEB = PodInfo("uid-web", "web-5d8f9c7b6-abcde", "shop")
DB = PodInfo("uid-db", "db-0", "data")
PODS = {p.uid: p for p in (WEB, DB)}
HEALTH = Health(pods=2, slots_in_use=3, slots_capacity=4096, cgroups_tracked=5, cgroups_capacity=65536,
                slots_exhausted=0, cgroups_full=0, no_storage=0)  # fmt: skip
NODE = PodSample(None, Counters(bytes_rx_tcp=10**9, bytes_tx_tcp=10**9, opened_out=999))


def snap(*samples: PodSample) -> Snapshot:
    return Snapshot((*samples, NODE), HEALTH)


# t0: web has received 1000 B and sent 5200 B, opened 10 connections (8 closed), 1 failed
T0 = snap(
    PodSample(
        "uid-web",
        Counters(bytes_rx_tcp=1000, bytes_tx_tcp=5000, bytes_tx_udp=200, opened_out=10, closed_out=8, failed_refused=1),
    ),
    PodSample("uid-db", Counters(bytes_rx_tcp=100_000, bytes_tx_tcp=100_000, opened_in=5)),
)
# t0 + 2 s: web +4000 B in, +20000 B out, +6 opened, +3 failed, 3 active; db idle; a
# host-mode pod (no name: known by its cgroup UID) appears with 600 B received
T1 = snap(
    PodSample(
        "uid-web",
        Counters(
            bytes_rx_tcp=4800,
            bytes_rx_udp=200,
            bytes_tx_tcp=25_000,
            bytes_tx_udp=200,
            opened_out=16,
            closed_out=13,
            failed_refused=3,
            failed_timeout=1,
        ),
    ),
    PodSample("uid-db", Counters(bytes_rx_tcp=100_000, bytes_tx_tcp=100_000, opened_in=5)),
    PodSample("uid-new", Counters(bytes_rx_udp=600)),
)

EXPECTED = """\
NAMESPACE  POD                    RX/s     TX/s  CONN/s  FAIL/s  ACTIVE      RX      TX  CONNS  FAILED
shop       web-5d8f9c7b6-abcde  2000.0  10000.0     3.0     1.5       3    5000   25200     16       4
-          uid-new               300.0      0.0     0.0     0.0       0     600       0      0       0
data       db-0                    0.0      0.0     0.0     0.0       5  100000  100000      5       0
"""


def metrics_text(snapshot: Snapshot) -> str:
    """What the agent's /metrics serves for this snapshot (its real exporter)."""
    exporter = PrometheusExporter("sim-node", ExportStats(), ("127.0.0.1", free_port()))
    try:
        exporter.export(snapshot, PODS)
        return exporter.metrics().decode()
    finally:
        exporter.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_once_table_from_two_scrapes_with_known_figures() -> None:
    prev = Reading(100.0, parse_metrics(metrics_text(T0)))
    cur = Reading(102.0, parse_metrics(metrics_text(T1)))
    assert set(cur.pods) == {"uid-web", "uid-db", "uid-new"}  # the node's own figures are no pod
    assert render(rows(prev, cur), human=False) == EXPECTED


def test_human_table_for_the_live_view() -> None:
    prev = Reading(100.0, parse_metrics(metrics_text(T0)))
    cur = Reading(102.0, parse_metrics(metrics_text(T1)))
    lines = render(rows(prev, cur), human=True, limit=2).splitlines()
    assert len(lines) == 3  # header and the two busiest
    web = ["shop", "web-5d8f9c7b6-abcde", "2.0KiB", "9.8KiB", "3.0", "1.5", "3", "4.9KiB", "24.6KiB", "16", "4"]
    assert lines[1].split() == web


@pytest.fixture
def serving() -> Iterator[tuple[PrometheusExporter, int]]:
    port = free_port()
    exporter = PrometheusExporter("sim-node", ExportStats(), ("127.0.0.1", port))
    try:
        yield exporter, port
    finally:
        exporter.shutdown()


def test_once_from_a_serving_exporter(
    serving: tuple[PrometheusExporter, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """--once waits for a fresh collection, then the next one, and prints the totals of the
    last exactly; its rates span the time between the two collections it saw."""
    exporter, port = serving
    exporter.export(snap(), PODS)

    def collections() -> None:
        time.sleep(0.6)
        exporter.export(T0, PODS)
        time.sleep(1.0)
        exporter.export(T1, PODS)

    t = threading.Thread(target=collections)
    t.start()
    try:
        rc = cli.main(["top", "--once", "--from", f"127.0.0.1:{port}"])
    finally:
        t.join()
    out = capsys.readouterr().out
    assert rc == 0
    table = [ln.split() for ln in out.splitlines()]
    assert table[0] == EXPECTED.splitlines()[0].split()
    by_pod = {r[1]: r for r in table[1:]}
    web = by_pod["web-5d8f9c7b6-abcde"]
    assert web[6:] == ["3", "5000", "25200", "16", "4"]
    assert by_pod["db-0"][6:] == ["5", "100000", "100000", "5", "0"]
    # 4000 B over the ~1 s between the collections (seen within the 0.25 s polling period)
    assert 4000 / 1.5 < float(web[2]) < 4000 / 0.6


def test_bad_from_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["top", "--once", "--from", "nohost"]) == 2
    err = capsys.readouterr().err
    assert err == "otel-podnet: --from 'nohost': expected HOST:PORT with a port from 1 to 65535\n"


def test_no_agent_there(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens
    assert cli.main(["top", "--once", "--from", f"127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"otel-podnet: --from: cannot read http://127.0.0.1:{port}/metrics (")
    assert err.count("\n") == 1
