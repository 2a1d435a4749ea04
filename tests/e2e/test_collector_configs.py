"""End-to-end checks of the shipped collector configs (collector-config/) against
a real otelcol-podnet built from tests/e2e/infra/otelcol-builder.yaml.

The first run builds the collector (several minutes); later runs reuse the
cached binary. All listeners are moved to free ports on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.collector import (
    CONFIG_DIR,
    SELF_TELEMETRY_OFF,
    build_otelcol,
    free_port,
    run_collector,
    validate_config,
)

pytestmark = pytest.mark.e2e

# The gateway's vendor exporter must have a valid endpoint to pass validation,
# even when a test leaves it out of the pipeline (it is then never started, so
# nothing is sent there).
GATEWAY_ENV = {
    "VENDOR_OTLP_ENDPOINT": "http://127.0.0.1:9",
    "VENDOR_API_KEY": "e2e-not-a-real-key",
}

METRIC_NAME = "podnet.e2e.probe"
PROM_METRIC_NAME = "podnet_e2e_probe"
METRIC_VALUE = 4242.5


@pytest.fixture(scope="module")
def otelcol() -> Path:
    return build_otelcol()


@pytest.mark.parametrize(
    ("config", "env"),
    [("agent.yaml", {}), ("gateway.yaml", GATEWAY_ENV)],
)
def test_shipped_config_validates(otelcol: Path, config: str, env: dict[str, str]) -> None:
    result = validate_config(otelcol, [CONFIG_DIR / config], env=env)
    assert result.returncode == 0, result.stderr


def test_gateway_requires_vendor_endpoint(otelcol: Path) -> None:
    result = validate_config(otelcol, [CONFIG_DIR / "gateway.yaml"], env={**GATEWAY_ENV, "VENDOR_OTLP_ENDPOINT": ""})
    assert result.returncode != 0
    assert "otlp_http/vendor" in result.stderr


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _gauge_request(pod_uid: str) -> bytes:
    """One OTLP/HTTP JSON ExportMetricsServiceRequest with a single gauge point."""
    body = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [
                        {"key": "k8s.pod.uid", "value": {"stringValue": pod_uid}},
                        {"key": "service.name", "value": {"stringValue": "otel-podnet-e2e"}},
                    ]
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "otel-podnet-e2e"},
                        "metrics": [
                            {
                                "name": METRIC_NAME,
                                "description": "probe sent by test_collector_configs.py",
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "timeUnixNano": str(time.time_ns()),
                                            "asDouble": METRIC_VALUE,
                                        }
                                    ]
                                },
                            }
                        ],
                    }
                ],
            }
        ]
    }
    return json.dumps(body).encode()


def _post_metrics(http_port: int, pod_uid: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/metrics",
        data=_gauge_request(pod_uid),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _wait_for(what: str, probe: Callable[[], str | None], timeout: float = 30.0) -> str:
    """Poll probe() until it returns a non-None result; fail with its last view."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _file_export_points(path: Path) -> Iterator[tuple[dict[str, Any], dict[str, Any], float]]:
    """(resource attributes, metric, value) for each gauge point in a file-exporter file.

    The file exporter writes one OTLP JSON ExportMetricsServiceRequest per line.
    """
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            continue
        for rm in request.get("resourceMetrics", []):
            attrs = {a["key"]: next(iter(a["value"].values())) for a in rm.get("resource", {}).get("attributes", [])}
            for sm in rm.get("scopeMetrics", []):
                for metric in sm.get("metrics", []):
                    for point in metric.get("gauge", {}).get("dataPoints", []):
                        yield attrs, metric, float(point.get("asDouble", "nan"))


def _file_has_probe(path: Path, pod_uid: str) -> str | None:
    for attrs, metric, value in _file_export_points(path):
        if metric["name"] == METRIC_NAME and attrs.get("k8s.pod.uid") == pod_uid and value == METRIC_VALUE:
            return json.dumps({"resource": attrs, "metric": metric["name"], "value": value})
    return None


def _prometheus_probe_line(prom_port: int, pod_uid: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if (
            line.startswith(PROM_METRIC_NAME + "{")
            and f'k8s_pod_uid="{pod_uid}"' in line
            and float(line.rsplit(" ", 1)[1]) == METRIC_VALUE
        ):
            return line
    return None


def _file_exporter_override(tmp_path: Path, out: Path) -> Path:
    """Extra --config file, merged over gateway.yaml: adds the file exporter.

    Lists are replaced on merge, so the exporter list is restated in full.
    JSON is valid YAML and quotes the path safely.
    """
    override = tmp_path / "file-exporter.yaml"
    override.write_text(
        json.dumps(
            {
                "exporters": {"file": {"path": str(out)}},
                "service": {"pipelines": {"metrics": {"exporters": ["file", "prometheus"]}}},
            }
        )
    )
    return override


def _gateway_test_sets(grpc_port: int, http_port: int, prom_port: int) -> list[str]:
    return [
        # k8s_attributes needs a Kubernetes API: leave it out of the pipeline.
        "service.pipelines.metrics.processors=[memory_limiter,batch]",
        f"receivers.otlp.protocols.grpc.endpoint=127.0.0.1:{grpc_port}",
        f"receivers.otlp.protocols.http.endpoint=127.0.0.1:{http_port}",
        f"exporters.prometheus.endpoint=127.0.0.1:{prom_port}",
        "processors.batch.timeout=100ms",
        SELF_TELEMETRY_OFF,
    ]


def test_gateway_exports_to_file_and_prometheus(otelcol: Path, tmp_path: Path) -> None:
    grpc_port, http_port, prom_port = _distinct_ports(3)
    out = tmp_path / "metrics.jsonl"
    pod_uid = str(uuid.uuid4())

    with run_collector(
        otelcol,
        [CONFIG_DIR / "gateway.yaml", _file_exporter_override(tmp_path, out)],
        _gateway_test_sets(grpc_port, http_port, prom_port),
        tmp_path,
        ready_port=http_port,
        env=GATEWAY_ENV,
    ):
        _post_metrics(http_port, pod_uid)
        _wait_for(f"{METRIC_NAME} in {out}", lambda: _file_has_probe(out, pod_uid))
        line = _wait_for(
            f"{PROM_METRIC_NAME} on the prometheus exporter",
            lambda: _prometheus_probe_line(prom_port, pod_uid),
        )
    assert 'service_name="otel-podnet-e2e"' in line


def test_agent_forwards_to_gateway(otelcol: Path, tmp_path: Path) -> None:
    """otel-podnet -> agent (OTLP/HTTP) -> gateway (OTLP/gRPC) -> file exporter."""
    gw_grpc, gw_http, gw_prom, agent_grpc, agent_http = _distinct_ports(5)
    out = tmp_path / "gateway" / "metrics.jsonl"
    out.parent.mkdir()
    pod_uid = str(uuid.uuid4())

    agent_sets = [
        f"receivers.otlp.protocols.grpc.endpoint=127.0.0.1:{agent_grpc}",
        f"receivers.otlp.protocols.http.endpoint=127.0.0.1:{agent_http}",
        "processors.batch.timeout=100ms",
        SELF_TELEMETRY_OFF,
    ]
    with run_collector(
        otelcol,
        [CONFIG_DIR / "gateway.yaml", _file_exporter_override(out.parent, out)],
        _gateway_test_sets(gw_grpc, gw_http, gw_prom),
        out.parent,
        ready_port=gw_grpc,
        env=GATEWAY_ENV,
    ):
        with run_collector(
            otelcol,
            [CONFIG_DIR / "agent.yaml"],
            agent_sets,
            tmp_path / "agent",
            ready_port=agent_http,
            env={"PODNET_GATEWAY_ENDPOINT": f"127.0.0.1:{gw_grpc}"},
        ):
            _post_metrics(agent_http, pod_uid)
            _wait_for(f"{METRIC_NAME} in {out}", lambda: _file_has_probe(out, pod_uid))
