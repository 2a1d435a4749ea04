"""Every environment variable `otel-podnet run` reads, set to a bad value: one line on stderr
naming the variable, its value and what was expected, and exit 2 (never a traceback). Real
runs of ``python3 -m otel_podnet run``; the errors come before anything needs privileges."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/podnet-test"
OTLP = "OTEL_EXPORTER_OTLP_"

CASES: list[tuple[str, str, str]] = [
    (f"{OTLP}TIMEOUT", "abc", "expected a timeout as a non-negative number, such as 10"),
    (f"{OTLP}TIMEOUT", "", "expected a timeout as a non-negative number, such as 10"),
    (f"{OTLP}METRICS_TIMEOUT", "-5", "expected a timeout as a non-negative number, such as 10"),
    (f"{OTLP}COMPRESSION", "zstd", "expected gzip, deflate or none"),
    (f"{OTLP}METRICS_COMPRESSION", "brotli", "expected gzip, deflate or none"),
    (f"{OTLP}HEADERS", "api-key", "expected key=value pairs separated by commas, such as api-key=secret"),
    (f"{OTLP}METRICS_HEADERS", "a=1,=2", "expected key=value pairs separated by commas, such as api-key=secret"),
    (f"{OTLP}INSECURE", "yes", "expected true or false"),
    (f"{OTLP}METRICS_INSECURE", "1", "expected true or false"),
    (f"{OTLP}CERTIFICATE", MISSING, "expected a readable PEM file of CA certificates"),
    (f"{OTLP}METRICS_CERTIFICATE", MISSING, "expected a readable PEM file of CA certificates"),
    (f"{OTLP}CLIENT_KEY", MISSING, "expected a readable PEM file of the client's private key"),
    (f"{OTLP}METRICS_CLIENT_KEY", MISSING, "expected a readable PEM file of the client's private key"),
    (f"{OTLP}CLIENT_CERTIFICATE", MISSING, "expected a readable PEM file of the client's certificate"),
    (f"{OTLP}METRICS_CLIENT_CERTIFICATE", MISSING, "expected a readable PEM file of the client's certificate"),
    (f"{OTLP}PROTOCOL", "http/json", "expected one of grpc, http/protobuf"),
    (f"{OTLP}METRICS_PROTOCOL", "udp", "expected one of grpc, http/protobuf"),
    (
        f"{OTLP}ENDPOINT",
        "collector",
        "expected a URL such as http://collector:4317 (grpc) or http://collector:4318 (http/protobuf)",
    ),
    (
        f"{OTLP}METRICS_ENDPOINT",
        "ftp://collector:21",
        "expected a URL such as http://collector:4317 (grpc) or http://collector:4318 (http/protobuf)",
    ),
    (f"{OTLP}METRICS_TEMPORALITY_PREFERENCE", "sometimes", "expected cumulative, delta or lowmemory"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "expected milliseconds, such as 10000"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0", "expected an interval between 0.05 s and 1 day"),
    ("OTEL_METRICS_EXPORTER", "zipkin", "expected one of otlp, prometheus, console, none"),
    ("NODE_NAME", "My Node", "expected a Kubernetes node name (lowercase letters, digits, '-' and '.')"),
    ("PODNET_PODS_FILE", MISSING, "expected an existing pods file (kubectl get pods -o yaml)"),
    ("PODNET_CGROUP_ROOT", MISSING, "expected the cgroup v2 mount directory"),
    ("KUBECONFIG", MISSING, "expected an existing kubeconfig file"),
    ("PODNET_PROMETHEUS_ADDRESS", "nowhere", "expected HOST:PORT with a port from 1 to 65535"),
    ("PODNET_HEALTH_ADDRESS", ":99999", "expected HOST:PORT with a port from 1 to 65535"),
    ("PODNET_BPF_OBJECT", MISSING, "expected the path of an existing file, the compiled BPF object (podnet.bpf.o)"),
    ("PODNET_LIBBPF", MISSING, "expected the path of an existing file, libbpf.so"),
    ("PODNET_MAX_PEERS", "many", "expected the number of peers per pod and metric, 0 (off) to 1000"),
    ("PODNET_MAX_PEERS", "1001", "expected the number of peers per pod and metric, 0 (off) to 1000"),
    (
        "PODNET_PEER_CIDRS",
        "10.1.0.0/16",
        "expected NAME=CIDR with a name of letters, digits, '-', '_' or '.'",
    ),
    (
        "PODNET_PEER_CIDRS",
        "corp=10.0.0.1/8",
        "expected NAME=CIDR with a network such as 10.0.0.0/8 or 2001:db8::/32 (no host bits set)",
    ),
]


def clean_env() -> dict[str, str]:
    """This process's environment without anything the agent reads."""
    drop = ("OTEL_", "PODNET_", "KUBECONFIG", "NODE_NAME", "KUBERNETES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = MISSING  # no ~/.kube/config
    return env


@pytest.mark.parametrize(("var", "value", "expected"), CASES, ids=[f"{v}={x!r}" for v, x, _ in CASES])
def test_bad_environment_value(tmp_path: Path, var: str, value: str, expected: str) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    argv = [sys.executable, "-m", "otel_podnet", "run"]
    if var != "PODNET_PODS_FILE":
        argv += ["--pods-file", str(pods)]
    r = subprocess.run(argv, env={**clean_env(), var: value}, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (2, f"otel-podnet: {var} {value!r}: {expected}\n")


def test_resource_attributes_malformed_entry(tmp_path: Path) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    value = "k8s.cluster.name=prod,team"
    r = subprocess.run(
        [sys.executable, "-m", "otel_podnet", "run", "--pods-file", str(pods)],
        env={**clean_env(), "OTEL_RESOURCE_ATTRIBUTES": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stderr) == (
        2,
        f"otel-podnet: OTEL_RESOURCE_ATTRIBUTES {value!r}: entry 'team': expected key=value pairs separated by "
        "commas, such as k8s.cluster.name=prod\n",
    )
