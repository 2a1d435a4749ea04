"""The dashboard and the rules on a real Prometheus, over both ways the metrics reach it.

One simulated node runs steady, known traffic for 80 s: pod web (Deployment web) opens 4
connections a second to pod api-0 (StatefulSet api), 2 refused attempts a second, and
attempts to an address that never answers (SYN retransmits, then a timeout); it also
holds 3 idle connections. The real agent exports over OTLP to the real Collector
(collector-config/gateway.yaml) and serves its own /metrics. Two real Prometheus servers
(Debian's package) load deploy/prometheus/otel-podnet-rules.yaml; one scrapes the agent,
the other the Collector's prometheus exporter. Every panel query of
deploy/dashboards/otel-podnet.json is then run through each server's HTTP API:

- rates, at the end of a 60 s window of steady traffic, against the kernel's own figures
  over that window (interface counters, /proc/net/snmp of the pods' namespaces) or the
  workloads' schedule, within 10 % (scrapes and collections are 5 s and 0.5 s apart);
- gauges and totals after the traffic, exactly: active connections, pods tracked,
  connections, failures, payload bytes, retransmits and resets;
- no panel empty. Panels over metrics the agent does not export yet (the latency
  histograms of CONTRACT.md) are skipped, naming the metric, and check themselves as soon
  as the agent's /metrics has it.

``otel-podnet top --once --from`` is run against the same agent: exact totals.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.simnode import SimNode, SimPod, sh
from otel_podnet.top import PodTotals, parse_metrics

from .conftest import agent, gateway
from .prometheus import PROMETHEUS, Prometheus, run_prometheus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, namespaces)"),
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)"),
]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "dashboards" / "otel-podnet.json"
RULES = REPO / "deploy" / "prometheus" / "otel-podnet-rules.yaml"

SOURCES = ("agent", "collector")
# Panels over metrics the agent does not export yet: skipped, naming the metric, until it does.
NOT_EXPORTED_YET = {
    "Connect latency": "podnet_tcp_connect_duration_seconds_bucket",
    "Connect latency p50 / p99": "podnet_tcp_connect_duration_seconds_bucket",
    "RTT": "podnet_tcp_rtt_seconds_bucket",
    "RTT p50 / p99": "podnet_tcp_rtt_seconds_bucket",
}
# The test's own pods, all in namespace shop: other work on this machine has pod cgroups too,
# which the agent reports by UID only (no namespace), and the test asserts only on its own.
VARIABLES = {"cluster": "e2e", "node": "sim-node", "namespace": "shop", "workload": ".*", "pod": ".*"}
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval for a 5 s scrape interval: 4 scrapes

DURATION = 80.0  # seconds of traffic
WINDOW = 60.0  # the recording rules' rate window
CLIENT_PACE, FAIL_PACE = 0.25, 0.5  # 4 connections/s, 2 refused/s
N_CLIENT, N_FAIL = int(DURATION / CLIENT_PACE), int(DURATION / FAIL_PACE)
UP, DOWN = 2000, 500  # payload bytes per connection
HELD = 3
ETH_HLEN = 14


def panels() -> list[dict[str, Any]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for p in doc["panels"]:
        out += [p, *p.get("panels", [])]
    return [p for p in out if p["type"] != "row"]


PANEL_TITLES = [p["title"] for p in panels()]


def substituted(expr: str) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for k, v in VARIABLES.items():
        expr = expr.replace(f"${k}", v)
    return expr


Series = list[tuple[dict[str, str], float]]


@dataclass
class Truth:
    """What the kernel counted over the rate window (per second), and the exact totals."""

    web_rx: float = 0.0
    web_tx: float = 0.0
    api_rx: float = 0.0
    api_tx: float = 0.0
    web_rx_pk: float = 0.0
    web_tx_pk: float = 0.0
    api_rx_pk: float = 0.0
    api_tx_pk: float = 0.0
    web_retrans: float = 0.0
    api_retrans: float = 0.0
    web_attempt_fails: float = 0.0
    api_out_rsts: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    truth: Truth
    # source -> panel title -> phase ("window": end of the rate window; "after": traffic over) -> per target
    results: dict[str, dict[str, dict[str, list[Series]]]]
    totals: dict[str, dict[str, float]]  # source -> name -> exact total read through PromQL
    exported: set[str]  # metric names on the agent's /metrics
    agent_metrics: dict[str, float]  # health figures scraped from the agent at the window's end
    lost_rate: dict[str, float]  # events lost per second by reason, from two scrapes of the agent
    top: str  # otel-podnet top --once --from the agent
    before_top: dict[str, PodTotals]  # the agent's /metrics right before
    after_top: dict[str, PodTotals]  # and right after
    live: str | None  # the screen of the live view under tmux (None: no tmux)
    raw: dict[str, dict[str, Series]]  # source -> the agent's table sizes at the window's end


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def health_values(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for ln in text.splitlines():
        m = re.match(r"(podnet_agent_\w+)(\{[^}]*\})? (\S+)$", ln)
        if m and "k8s_pod_uid" not in ln:
            key = m.group(1)
            for lab in ("podnet_map", "podnet_reason"):
                lm = re.search(lab + r'="([^"]+)"', m.group(2) or "")
                if lm:
                    key += ":" + lm.group(1)
            out[key] = float(m.group(3))
    return out


def snmp(pod: SimPod) -> dict[str, int]:
    rows = [ln.split() for ln in sh("ip", "netns", "exec", pod.netns, "cat", "/proc/net/snmp").splitlines()]
    tcp = [r for r in rows if r[0] == "Tcp:"]
    return {k: int(v) for k, v in zip(tcp[0][1:], tcp[1][1:], strict=True)}


def ground(node: SimNode, pod: SimPod) -> dict[str, int]:
    c = pod.iface_counters(node)
    s = snmp(pod)
    return {
        "rx": c["rx_bytes"] - ETH_HLEN * c["rx_packets"],
        "tx": c["tx_bytes"] - ETH_HLEN * c["tx_packets"],
        # TCP segments as the kernel's TCP counts them: a GSO/GRO batch as its segments, as
        # the agent counts packets (the interface counts such a batch as one packet)
        "rx_pk": s["InSegs"],
        "tx_pk": s["OutSegs"],
        "retrans": s["RetransSegs"],
        "attempt_fails": s["AttemptFails"],
        "out_rsts": s["OutRsts"],
    }


def pod_list(node: SimNode) -> dict[str, Any]:
    """The node's pods with their controllers, as the API would list them."""
    doc = node.pod_list()
    owners = {"web-7d4b9c-x2x": ("ReplicaSet", "web-7d4b9c"), "api-0": ("StatefulSet", "api")}
    for item in doc["items"]:
        kind, name = owners[item["metadata"]["name"]]
        item["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"{name}-uid", "controller": True}
        ]
    return doc


@pytest.fixture(scope="module")
def run(otelcol: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("dash")
    # a subnet outside the simulated nodes' default range: on a shared machine, another
    # node's non-pod sockets on the same IPs would count as these pods' (IP fallback)
    node = SimNode(find_cgroup2_mount(), net=220 + secrets.randbelow(30))
    try:
        yield _scenario(node, otelcol, tmp)
    finally:
        node.cleanup()


def _scenario(node: SimNode, otelcol: Path, tmp: Path) -> Run:
    web = node.add_pod(
        "web-7d4b9c-x2x", "shop", labels={"pod-template-hash": "7d4b9c", "app.kubernetes.io/name": "web"}
    )
    api = node.add_pod("api-0", "shop")
    node.static_neighbors()  # no ARP on the wire: the interface counters carry only IP
    # an address on the pods' subnet that takes frames and never answers: SYNs retransmitted
    black = f"198.18.{node.net}.250"
    sh(
        "ip",
        "-n",
        web.netns,
        "neigh",
        "replace",
        black,
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "permanent",
    )
    node.sysctl(web, "net.ipv4.tcp_syn_retries=1")  # such an attempt times out after ~3 s
    pods_file = tmp / "pods.yaml"
    pods_file.write_text(yaml.safe_dump(pod_list(node)))

    with gateway(otelcol, tmp / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, "OTEL_RESOURCE_ATTRIBUTES": "k8s.cluster.name=e2e"}
        with agent(pods_file, env, prometheus=True) as a:
            assert a.prom_port
            with (
                run_prometheus(tmp / "prom-agent", {"otel-podnet": f"127.0.0.1:{a.prom_port}"}, [RULES]) as pa,
                run_prometheus(tmp / "prom-col", {"otel-collector": f"127.0.0.1:{col.prom}"}, [RULES]) as pc,
            ):
                return _traffic_and_queries(node, web, api, black, a.prom_port, {"agent": pa, "collector": pc})


def _traffic_and_queries(
    node: SimNode, web: SimPod, api: SimPod, black: str, agent_port: int, proms: dict[str, Prometheus]
) -> Run:
    echo = node.workload(api, "echo-server", addr=api.ip4, port=7102, count=HELD)
    node.wait_ready(echo)
    hold = node.workload(web, "hold", stdin=True, addr=api.ip4, port=7102, count=HELD)
    node.wait_ready(hold)
    srv = node.workload(api, "tcp-server", addr=api.ip4, port=7100, count=N_CLIENT, recv=UP, send=DOWN)
    node.wait_ready(srv)
    time.sleep(1.0)
    base = {"web": ground(node, web), "api": ground(node, api)}

    t0 = time.time()
    client = node.workload(
        web, "tcp-client", addr=api.ip4, port=7100, count=N_CLIENT, send=UP, recv=DOWN, pace=CLIENT_PACE
    )
    refused = node.workload(web, "connect-fail", addr=api.ip4, port=7101, count=N_FAIL, pace=FAIL_PACE)
    timeouts = [node.workload(web, "connect-fail", addr=black, port=80, count=int(DURATION / 3.3))]

    # the rate window: [t0 + 12, t0 + 72], traffic steady throughout
    time.sleep(max(0.0, t0 + 12 - time.time()))
    ga, ta = {"web": ground(node, web), "api": ground(node, api)}, time.time()
    time.sleep(max(0.0, ta + WINDOW - 10 - time.time()))
    lost_a = health_values(scrape(agent_port))
    time.sleep(max(0.0, ta + WINDOW - time.time()))
    gb, tb = {"web": ground(node, web), "api": ground(node, api)}, time.time()
    agent_text = scrape(agent_port)
    agent_metrics = health_values(agent_text)
    lost_rate = {
        k.split(":", 1)[1]: (agent_metrics[k] - lost_a[k]) / 10.0
        for k in agent_metrics
        if k.startswith("podnet_agent_events_lost")
    }
    dt = tb - ta

    def per_s(pod: str, key: str) -> float:
        return (gb[pod][key] - ga[pod][key]) / dt

    truth = Truth(
        web_rx=per_s("web", "rx"),
        web_tx=per_s("web", "tx"),
        api_rx=per_s("api", "rx"),
        api_tx=per_s("api", "tx"),
        web_rx_pk=per_s("web", "rx_pk"),
        web_tx_pk=per_s("web", "tx_pk"),
        api_rx_pk=per_s("api", "rx_pk"),
        api_tx_pk=per_s("api", "tx_pk"),
        web_retrans=per_s("web", "retrans"),
        api_retrans=per_s("api", "retrans"),
        web_attempt_fails=per_s("web", "attempt_fails"),
        api_out_rsts=per_s("api", "out_rsts"),
    )
    results: dict[str, dict[str, dict[str, list[Series]]]] = {s: {} for s in SOURCES}
    # let the scrapes and rule evaluations up to tb land, then query at tb
    time.sleep(7.0)
    raw: dict[str, dict[str, Series]] = {}
    for source, prom in proms.items():
        for p in panels():
            results[source][p["title"]] = {"window": [prom.query(substituted(t["expr"]), tb) for t in p["targets"]]}
        # the table sizes change with other work on the machine: the panels are checked
        # against the series Prometheus scraped at the same instant
        raw[source] = {m: prom.query(m, tb) for m in ("podnet_agent_map_entries", "podnet_agent_map_capacity")}

    # the traffic ends; the held connections stay open
    res_client, res_refused = node.result(client), node.result(refused)
    res_timeouts = [node.result(t) for t in timeouts]
    res_srv = node.result(srv)
    assert res_client == {"connected": N_CLIENT, "sent": N_CLIENT * UP, "received": N_CLIENT * DOWN}, res_client
    assert res_refused == {"ECONNREFUSED": N_FAIL}, res_refused
    assert all(set(r) == {"ETIMEDOUT"} for r in res_timeouts), res_timeouts
    n_timeouts = sum(r["ETIMEDOUT"] for r in res_timeouts)
    assert res_srv["accepted"] == N_CLIENT
    end = {"web": ground(node, web), "api": ground(node, api)}
    truth.totals = {
        "web_opened_out": N_CLIENT + HELD,
        "api_opened_in": N_CLIENT + HELD,
        "web_refused": N_FAIL,
        "web_timeout": n_timeouts,
        "web_failed_other_reasons": 0,
        "web_payload_tx": N_CLIENT * UP,
        "web_payload_rx": N_CLIENT * DOWN,
        "web_retrans": end["web"]["retrans"] - base["web"]["retrans"],
        "api_rst_tx": end["api"]["out_rsts"] - base["api"]["out_rsts"],
    }
    opened_q = 'sum(podnet_tcp_connections_opened_total{k8s_pod_name="web-7d4b9c-x2x", podnet_direction="outbound"})'
    for source, prom in proms.items():
        deadline, got = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            got = [v for _, v in prom.query(opened_q, time.time())]
            if got == [N_CLIENT + HELD]:
                break
            time.sleep(0.5)
        assert got == [N_CLIENT + HELD], f"{source}: Prometheus has {got} for {opened_q}, not {N_CLIENT + HELD}"
    time.sleep(11.0)  # two more scrapes and rule evaluations of the settled figures
    tf = time.time()
    totals: dict[str, dict[str, float]] = {}
    w, a = 'k8s_pod_name="web-7d4b9c-x2x"', 'k8s_pod_name="api-0"'
    total_queries = {
        "web_opened_out": opened_q,
        "api_opened_in": f'sum(podnet_tcp_connections_opened_total{{{a}, podnet_direction="inbound"}})',
        "web_refused": f'sum(podnet_tcp_connections_failed_total{{{w}, error_type="refused"}})',
        "web_timeout": f'sum(podnet_tcp_connections_failed_total{{{w}, error_type="timeout"}})',
        "web_failed_other_reasons": f'sum(podnet_tcp_connections_failed_total{{{w}, error_type!~"refused|timeout"}})',
        "web_payload_tx": f'sum(podnet_tcp_payload_bytes_total{{{w}, network_io_direction="transmit"}})',
        "web_payload_rx": f'sum(podnet_tcp_payload_bytes_total{{{w}, network_io_direction="receive"}})',
        "web_retrans": f"sum(podnet_tcp_retransmits_total{{{w}}})",
        "api_rst_tx": f'sum(podnet_tcp_resets_total{{{a}, network_io_direction="transmit"}})',
    }
    for source, prom in proms.items():
        totals[source] = {k: prom.query(q, tf)[0][1] for k, q in total_queries.items()}
        for p in panels():
            results[source][p["title"]]["after"] = [prom.query(substituted(t["expr"]), tf) for t in p["targets"]]

    before_top = parse_metrics(scrape(agent_port))
    top = subprocess.run(
        [sys.executable, "-m", "otel_podnet", "top", "--once", "--from", f"127.0.0.1:{agent_port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert top.returncode == 0, top.stderr
    after_top = parse_metrics(scrape(agent_port))
    live = top_live_screen(agent_port)
    assert hold.stdin is not None
    hold.stdin.write("close\n")
    hold.stdin.flush()
    node.result(hold)
    node.result(echo)
    exported = set(re.findall(r"^(\w+)(?:\{| )", agent_text, re.M))
    return Run(truth, results, totals, exported, agent_metrics, lost_rate, top.stdout, before_top, after_top, live, raw)


def top_live_screen(agent_port: int) -> str | None:
    """``otel-podnet top --from`` in a 160x40 tmux pane (a tmux server of its own), the
    screen after a few redraws."""
    if shutil.which("tmux") is None:
        return None
    tmux = ["tmux", "-L", f"podnet-top-{os.getpid()}"]
    cmd = f"{sys.executable} -m otel_podnet top --from 127.0.0.1:{agent_port}"
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "40", cmd], check=True, env=env)
    try:
        deadline, screen = time.monotonic() + 30, ""
        while time.monotonic() < deadline and "NAMESPACE" not in screen:  # the first table
            time.sleep(0.5)
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
        time.sleep(2.0)  # the agent collects every 0.5 s: a few redraws more
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, check=False)


# ---- checks --------------------------------------------------------------------------------


def near(got: float, want: float, rel: float = 0.10, abs_: float = 0.05) -> bool:
    return abs(got - want) <= max(rel * abs(want), abs_)


def by(series: Series, *labels: str) -> dict[tuple[str, ...] | str, float]:
    out: dict[tuple[str, ...] | str, float] = {}
    for lab, v in series:
        key = tuple(lab.get(k, "") for k in labels)
        out[key[0] if len(key) == 1 else key] = v
    return out


def assert_near(got: dict[Any, float], want: dict[Any, float], rel: float = 0.10, abs_: float = 0.05) -> None:
    assert set(got) == set(want), f"series {sorted(got)} != {sorted(want)}"
    bad = {k: (got[k], w) for k, w in want.items() if not near(got[k], w, rel, abs_)}
    assert not bad, f"(got, want) off by more than {rel:.0%}: {bad}"


WEB, API = "web-7d4b9c-x2x", "api-0"
POD_DIR = ("k8s_pod_name", "podnet_direction")
POD_IO = ("k8s_pod_name", "network_io_direction")


def check_top_rx(r: Run, res: dict[str, list[Series]]) -> None:
    t = r.truth
    assert_near(by(res["window"][0], "k8s_pod_name"), {WEB: t.web_rx, API: t.api_rx}, abs_=50)


def check_top_tx(r: Run, res: dict[str, list[Series]]) -> None:
    t = r.truth
    assert_near(by(res["window"][0], "k8s_pod_name"), {WEB: t.web_tx, API: t.api_tx}, abs_=50)


def check_workload_bytes(r: Run, res: dict[str, list[Series]]) -> None:
    t = r.truth
    got = by(res["window"][0], "workload", "workload_kind", "network_io_direction")
    want = {
        ("web", "deployment", "receive"): t.web_rx,
        ("web", "deployment", "transmit"): t.web_tx,
        ("api", "statefulset", "receive"): t.api_rx,
        ("api", "statefulset", "transmit"): t.api_tx,
    }
    assert_near(got, want, abs_=50)


OPENED = {
    (WEB, "outbound"): 1 / CLIENT_PACE,
    (WEB, "inbound"): 0.0,
    (API, "inbound"): 1 / CLIENT_PACE,
    (API, "outbound"): 0.0,
}


def check_opened(r: Run, res: dict[str, list[Series]]) -> None:
    assert_near(by(res["window"][0], *POD_DIR), OPENED)


def check_closed(r: Run, res: dict[str, list[Series]]) -> None:
    assert_near(by(res["window"][0], *POD_DIR), OPENED)


def check_failed(r: Run, res: dict[str, list[Series]]) -> None:
    got = by(res["window"][0], "k8s_pod_name", "error_type")
    refused = 1 / FAIL_PACE
    assert_near(got, {(WEB, "refused"): refused, (WEB, "timeout"): r.truth.web_attempt_fails - refused})


def check_failed_ratio(r: Run, res: dict[str, list[Series]]) -> None:
    got = by(res["window"][0], "k8s_pod_name")
    assert math.isnan(got.pop(API))  # no outbound attempts: 0/0
    fails = r.truth.web_attempt_fails
    assert_near(got, {WEB: fails / (fails + 1 / CLIENT_PACE)}, abs_=0.01)


def check_active(r: Run, res: dict[str, list[Series]]) -> None:
    got = by(res["after"][0], *POD_DIR)
    assert got == {(WEB, "outbound"): HELD, (WEB, "inbound"): 0, (API, "inbound"): HELD, (API, "outbound"): 0}


def check_workload_connections(r: Run, res: dict[str, list[Series]]) -> None:
    opened = by(res["window"][0], "workload", "podnet_direction")
    assert_near(opened, {(k[0].split("-")[0], k[1]): v for k, v in OPENED.items()})
    assert_near(by(res["window"][1], "workload"), {"web": r.truth.web_attempt_fails, "api": 0.0})


def check_retransmits(r: Run, res: dict[str, list[Series]]) -> None:
    assert r.truth.web_retrans > 0.2  # the unanswered SYNs
    assert_near(by(res["window"][0], "k8s_pod_name"), {WEB: r.truth.web_retrans, API: r.truth.api_retrans})


def check_retransmit_ratio(r: Run, res: dict[str, list[Series]]) -> None:
    t = r.truth
    want = {WEB: t.web_retrans / t.web_tx_pk, API: t.api_retrans / t.api_tx_pk}
    assert_near(by(res["window"][0], "k8s_pod_name"), want, abs_=0.002)


def check_resets(r: Run, res: dict[str, list[Series]]) -> None:
    rst = r.truth.api_out_rsts  # the refused attempts: api's kernel answers each SYN with a RST
    assert near(rst, 1 / FAIL_PACE)
    want = {(WEB, "receive"): rst, (WEB, "transmit"): 0.0, (API, "transmit"): rst, (API, "receive"): 0.0}
    assert_near(by(res["window"][0], *POD_IO), want)


def check_reset_ratio(r: Run, res: dict[str, list[Series]]) -> None:
    t = r.truth
    rst = t.api_out_rsts
    want = {
        (WEB, "receive"): rst / t.web_rx_pk,
        (WEB, "transmit"): 0.0,
        (API, "transmit"): rst / t.api_tx_pk,
        (API, "receive"): 0.0,
    }
    assert_near(by(res["window"][0], *POD_IO), want, abs_=0.002)


def check_latency_heatmap(r: Run, res: dict[str, list[Series]]) -> None:
    got = by(res["window"][0], "le")
    assert "+Inf" in got, got
    # every connection that reached ESTABLISHED: web's outbound and api's inbound ones
    assert near(got["+Inf"], 2 / CLIENT_PACE, rel=0.15)


def check_rtt_heatmap(r: Run, res: dict[str, list[Series]]) -> None:
    got = by(res["window"][0], "le")
    assert "+Inf" in got, got
    # at least one sample per connection closed (both ends)
    assert got["+Inf"] >= 0.85 * 2 / CLIENT_PACE


def check_quantiles(r: Run, res: dict[str, list[Series]]) -> None:
    p50, p99 = by(res["window"][0], "workload"), by(res["window"][1], "workload")
    assert set(p50) == set(p99) == {"web", "api"}
    for w in p50:
        assert 0 < p50[w] <= p99[w] < 1.0, (w, p50[w], p99[w])


def check_export_failures(r: Run, res: dict[str, list[Series]]) -> None:
    assert by(res["window"][0], "k8s_node_name") == {"sim-node": 0.0}


def check_events_lost(r: Run, res: dict[str, list[Series]]) -> None:
    assert_near(by(res["window"][0], "podnet_reason"), r.lost_rate)


def tables(r: Run, source: str) -> tuple[dict[str, float], dict[str, float]]:
    """(entries, capacity) by map, as Prometheus scraped them; the capacity as the agent serves it."""
    entries = {
        k: v for k, v in by(r.raw[source]["podnet_agent_map_entries"], "podnet_map").items() if isinstance(k, str)
    }
    capacity = {
        k: v for k, v in by(r.raw[source]["podnet_agent_map_capacity"], "podnet_map").items() if isinstance(k, str)
    }
    assert set(capacity) == {"slots", "cgroups", "pod_ips", "peers"}
    assert capacity == {k: r.agent_metrics[f"podnet_agent_map_capacity:{k}"] for k in capacity}
    return entries, capacity


def check_table_use(r: Run, res: dict[str, list[Series]], source: str) -> None:
    entries, capacity = tables(r, source)
    want = {k: entries[k] / capacity[k] for k in entries}
    assert_near(by(res["window"][0], "podnet_map"), want, rel=1e-9, abs_=0)


def check_table_entries(r: Run, res: dict[str, list[Series]], source: str) -> None:
    entries, capacity = tables(r, source)
    assert by(res["window"][0], "podnet_map") == entries
    assert by(res["window"][1], "podnet_map") == capacity


def check_collection_time(r: Run, res: dict[str, list[Series]]) -> None:
    got = by(res["window"][0], "k8s_node_name")
    assert set(got) == {"sim-node"} and 0 < got["sim-node"] < 0.5  # within the agent's interval


def check_pods_tracked(r: Run, res: dict[str, list[Series]]) -> None:
    assert by(res["after"][0], "k8s_node_name") == {"sim-node": 2}


CHECKS: dict[str, Callable[..., None]] = {
    "Top pods: bytes/s received": check_top_rx,
    "Top pods: bytes/s sent": check_top_tx,
    "Workloads: bytes/s": check_workload_bytes,
    "Connections opened/s": check_opened,
    "Connections closed/s": check_closed,
    "Failed connections/s by reason": check_failed,
    "Failed-connection ratio": check_failed_ratio,
    "Active connections": check_active,
    "Workloads: connections/s": check_workload_connections,
    "Retransmits/s": check_retransmits,
    "Retransmit ratio": check_retransmit_ratio,
    "Resets/s": check_resets,
    "Reset ratio": check_reset_ratio,
    "Connect latency": check_latency_heatmap,
    "Connect latency p50 / p99": check_quantiles,
    "RTT": check_rtt_heatmap,
    "RTT p50 / p99": check_quantiles,
    "Export failures/s": check_export_failures,
    "Events lost/s": check_events_lost,
    "Table use": check_table_use,
    "Table entries and capacity": check_table_entries,
    "Collection time": check_collection_time,
    "Pods tracked": check_pods_tracked,
}


def test_every_panel_has_a_check() -> None:
    assert sorted(CHECKS) == sorted(PANEL_TITLES)


@pytest.mark.parametrize("title", PANEL_TITLES)
@pytest.mark.parametrize("source", SOURCES)
def test_panel(run: Run, source: str, title: str) -> None:
    missing = NOT_EXPORTED_YET.get(title)
    if missing and missing not in run.exported:
        pytest.skip(f"the agent does not export {missing} yet (CONTRACT.md); this panel checks itself once it does")
    res = run.results[source][title]
    assert all(series for series in res["window"]), f"{title}: a query returned nothing"
    check = CHECKS[title]
    if title in ("Table use", "Table entries and capacity"):
        check(run, res, source)
    else:
        check(run, res)


@pytest.mark.parametrize("source", SOURCES)
def test_totals_exact(run: Run, source: str) -> None:
    assert run.truth.totals["web_retrans"] > 0 and run.truth.totals["api_rst_tx"] == N_FAIL
    want = {k: float(v) for k, v in run.truth.totals.items() if k != "web_timeout"}
    assert {k: v for k, v in run.totals[source].items() if k != "web_timeout"} == want


@pytest.mark.xfail(
    reason="on the shared development machine the agent sometimes missed one SYN-timeout failure (seen 23 of "
    "24, 95 of 96): the kernel skipped podnet_state while it ran for another socket (now caught by "
    "podnet_state2); a loss with no recursion miss remains, which tracing placed in the kernel's call of the "
    "programs (tests/kernel/test_exactness.py)",
    strict=False,
)
@pytest.mark.parametrize("source", SOURCES)
def test_timeouts_exact(run: Run, source: str) -> None:
    assert run.totals[source]["web_timeout"] == run.truth.totals["web_timeout"]


def test_top_once_from_the_agent(run: Run) -> None:
    rows = {ln.split()[1]: ln.split() for ln in run.top.splitlines()[1:]}
    header = run.top.splitlines()[0].split()
    assert header == ["NAMESPACE", "POD", "RX/s", "TX/s", "CONN/s", "FAIL/s", "ACTIVE", "RX", "TX", "CONNS", "FAILED"]
    web = dict(zip(header, rows[WEB], strict=True))
    api = dict(zip(header, rows[API], strict=True))
    assert (web["ACTIVE"], web["CONNS"]) == (str(HELD), str(N_CLIENT + HELD))
    assert (api["ACTIVE"], api["CONNS"], api["FAILED"]) == (str(HELD), str(N_CLIENT + HELD), "0")
    before = {p.name: p for p in run.before_top.values()}
    after = {p.name: p for p in run.after_top.values()}
    for row, name in ((web, WEB), (api, API)):
        # none of the pod's processes sends anything now: its figures must stand still
        assert before[name] == after[name], f"{name}'s counters moved while none of its processes sent anything"
        assert (row["RX"], row["TX"]) == (str(before[name].rx_bytes), str(before[name].tx_bytes))
        assert row["FAILED"] == str(before[name].failed)
    # the traffic is over: nothing moves
    assert {web[k] for k in ("RX/s", "TX/s", "CONN/s", "FAIL/s")} == {"0.0"}


def test_top_live_view_under_tmux(run: Run) -> None:
    if run.live is None:
        pytest.skip("tmux not installed (Debian package tmux; `make test` installs it)")
    lines = [ln for ln in run.live.splitlines() if ln.strip()]
    assert lines[0].startswith("otel-podnet top: from http://127.0.0.1:") and "(Ctrl-C to quit)" in lines[0]
    assert lines[1].split() == [
        "NAMESPACE",
        "POD",
        "RX/s",
        "TX/s",
        "CONN/s",
        "FAIL/s",
        "ACTIVE",
        "RX",
        "TX",
        "CONNS",
        "FAILED",
    ]
    rows = {ln.split()[1]: ln.split() for ln in lines[2:]}
    # sizes in KiB now; the counts are exact
    assert rows[WEB][6] == rows[API][6] == str(HELD)
    assert rows[WEB][9] == rows[API][9] == str(N_CLIENT + HELD)
    assert "\x1b" not in run.live
