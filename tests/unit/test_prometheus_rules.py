"""deploy/prometheus/otel-podnet-rules.yaml under Prometheus' own tools: ``promtool check
rules`` and ``promtool test rules`` (tests/unit/prometheus/otel-podnet-rules.test.yaml:
input series as the agent and the Collector write them, exact expected values for every
recording rule, each alert both before and after it fires with its rendered annotations).
promtool comes from Debian's ``prometheus`` package (``make test`` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "otel-podnet-rules.yaml"
RULE_TESTS = REPO / "tests" / "unit" / "prometheus" / "otel-podnet-rules.test.yaml"
README = REPO / "README.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; `make test` installs it)"
)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


@needs_promtool
def test_promtool_check_rules() -> None:
    r = _promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    r = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    exprs = " ".join(t["expr"] for case in tests for t in case.get("promql_expr_test", []))
    alert_cases = [a for case in tests for a in case.get("alert_rule_test", [])]
    for rule in _rules():
        if "record" in rule:
            assert re.search(re.escape(rule["record"]) + r"\b", exprs), f"no promql_expr_test reads {rule['record']}"
        else:
            mine = [a for a in alert_cases if a["alertname"] == rule["alert"]]
            assert any(a["exp_alerts"] for a in mine), f"{rule['alert']}: no test where it fires"
            assert any(not a["exp_alerts"] for a in mine), f"{rule['alert']}: no test where it does not (yet) fire"
            for a in mine:
                for exp in a["exp_alerts"]:
                    assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url"}


def test_alerts_say_which_pod_and_have_a_runbook() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+ (.+)$", README.read_text(), re.M)
    }
    alerts = [r for r in _rules() if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "PodnetPodConnectionFailuresHigh",
        "PodnetPodRetransmitsHigh",
        "PodnetAgentNotExporting",
        "PodnetAgentTableNearCapacity",
        "PodnetAgentDown",
    }
    for a in alerts:
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], a["alert"]
        # a pod's alert names the pod; an agent's names its node and, when scraped, its pod
        names = ("$labels.k8s_pod_name",) if a["alert"].startswith("PodnetPod") else ("$labels.pod",)
        assert all(n in ann["description"] for n in names), f"{a['alert']}: the description names no pod"
        anchor = a["alert"].lower()
        assert ann["runbook_url"] == f"README.md#{anchor}"
        assert anchor in headings, f"README.md has no runbook section '{a['alert']}'"


def test_the_chart_ships_the_same_files() -> None:
    """The Helm chart can only read files inside it: its copies must be these files."""
    chart_files = REPO / "deploy" / "helm" / "otel-podnet" / "files"
    assert (chart_files / "otel-podnet-rules.yaml").read_bytes() == RULES.read_bytes()
    assert (chart_files / "otel-podnet.json").read_bytes() == (REPO / "deploy/dashboards/otel-podnet.json").read_bytes()
