"""deploy/dashboards/otel-podnet.json: what Grafana needs to import it (schema version, a
datasource variable every panel and variable uses, unique panel ids, a layout on the 24
column grid), every query valid PromQL (promtool parses each one), and every metric it
reads either recorded by deploy/prometheus/otel-podnet-rules.yaml or exported by the agent
under the name the exporter really gives it (latency histograms: the contract's names,
not exported yet)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_podnet.exporters.promtext import prom_name
from otel_podnet.series import HEALTH_METRICS, POD_METRICS

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "dashboards" / "otel-podnet.json"
RULES = REPO / "deploy" / "prometheus" / "otel-podnet-rules.yaml"
VARIABLES = ("cluster", "node", "namespace", "workload", "pod")
# CONTRACT.md's histograms (podnet.tcp.connect.duration, podnet.tcp.rtt; unit s): the panels
# reading them stay empty until the agent exports them.
CONTRACT_HISTOGRAMS = {"podnet_tcp_connect_duration_seconds_bucket", "podnet_tcp_rtt_seconds_bucket"}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def all_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out += p.get("panels", [])  # panels inside collapsed rows
    return out


def queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in all_panels(doc) for t in p.get("targets", [])]


def substituted(expr: str) -> str:
    """The query as Grafana sends it with every variable at All."""
    expr = expr.replace("$__rate_interval", "1m")
    for v in VARIABLES:
        expr = expr.replace(f"${v}", ".*")
    return expr


def test_importable_by_grafana() -> None:
    doc = dashboard()
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    assert doc["uid"] == "otel-podnet" and doc["title"]
    assert "id" not in doc or doc["id"] is None  # an id would clash with the importing Grafana's
    panels = all_panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        assert p["type"] in {"row", "timeseries", "heatmap", "stat", "table"}, p["type"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
    # no two panels overlap on the grid
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_variables() -> None:
    tmpl = {v["name"]: v for v in dashboard()["templating"]["list"]}
    ds = tmpl["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in VARIABLES:
        v = tmpl[name]
        assert v["type"] == "query" and v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # All matches series without the label too (no k8s.cluster.name set, host-mode pods)
        assert v["includeAll"] and v["allValue"] == ".*"
        assert v["definition"] == v["query"]["query"] and v["query"]["query"].startswith("label_values(")
    used = {m for _, e in queries(dashboard()) for m in re.findall(r"\$(\w+)", e)}
    assert used <= {*VARIABLES, "__rate_interval"}, used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    qs = queries(dashboard())
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":  # label_values(SELECTOR, LABEL): SELECTOR must parse
            qs.append((v["name"], re.sub(r"^label_values\((.*), \w+\)$", r"\1", v["query"]["query"])))
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": substituted(e)} for i, (_, e) in enumerate(qs)]}
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(qs)} rules found" in r.stdout


def test_metric_names_exist() -> None:
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    exported = {prom_name(d) + ("_total" if d.monotonic else "") for d in (*POD_METRICS, *HEALTH_METRICS)}
    for title, expr in queries(dashboard()):
        names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr)) - {"by", "without", "on", "group_left"}
        assert names, f"{title}: no metric"
        unknown = names - recorded - exported - CONTRACT_HISTOGRAMS
        assert not unknown, f"{title}: {unknown} is neither recorded nor exported"
        assert "podnet_peer" not in expr  # peer metrics do not exist yet: no peer panels


def test_the_panels_the_issue_asks_for() -> None:
    titles = {p["title"] for p in all_panels(dashboard())}
    assert {
        "Top pods: bytes/s received",
        "Top pods: bytes/s sent",
        "Connections opened/s",
        "Connections closed/s",
        "Failed connections/s by reason",
        "Active connections",
        "Retransmits/s",
        "Retransmit ratio",
        "Resets/s",
        "Reset ratio",
        "Connect latency",
        "Connect latency p50 / p99",
        "RTT",
        "RTT p50 / p99",
        "Export failures/s",
        "Events lost/s",
        "Table use",
        "Collection time",
    } <= titles
