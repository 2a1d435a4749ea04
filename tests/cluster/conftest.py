"""Fixtures of the real-node tests: the images, the node, a Collector on the host."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.apiserver import build_kube
from tests.e2e.collector import CONFIG_DIR, SELF_TELEMETRY_OFF, build_otelcol, free_port, run_collector

from .node import NODE_IP, Node, run_node

REPO: Path = Path(__file__).resolve().parents[2]
#: The image build script (deploy/image/build.sh); PODNET_IMAGE_BUILD names another copy.
IMAGE_BUILD = Path(os.environ.get("PODNET_IMAGE_BUILD", REPO / "deploy" / "image" / "build.sh"))
AGENT_REPOSITORY = "localhost/otel-podnet"
#: The agent's tag, and a second tag of the same image for the rolling update.
AGENT_TAG = "0.1.0"
AGENT_TAG_NEXT = "0.1.0-b"
PAUSE_IMAGE = "localhost/otel-podnet-pause:v1"
WORKLOAD_IMAGE = "localhost/otel-podnet-workload:v1"

#: What the tests measured for the report at the end of the session (pytest's summary).
REPORT: dict[str, Any] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = "needs root (a kubelet, containerd, BPF)" if os.geteuid() != 0 else None
    for item in items:
        if f"{os.sep}cluster{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("real node (tests/cluster)")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")


@dataclass(frozen=True)
class Images:
    agent: Path
    agent_next: Path
    pause: Path
    workload: Path


@pytest.fixture(scope="session")
def images() -> Images:
    """The agent (two tags), pause and workload images as archives for ``ctr images import``,
    built by deploy/image/build.sh (cached by its inputs)."""
    if not IMAGE_BUILD.exists():
        pytest.fail(f"{IMAGE_BUILD} is missing: the images come from deploy/image/build.sh")
    proc = subprocess.run(
        ["bash", str(IMAGE_BUILD), "--tag", AGENT_TAG, "--tag", AGENT_TAG_NEXT],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{IMAGE_BUILD} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    paths = [Path(line) for line in proc.stdout.split()]
    by_name = {p.name: p for p in paths}
    return Images(
        agent=by_name[f"otel-podnet-{AGENT_TAG}.tar"],
        agent_next=by_name[f"otel-podnet-{AGENT_TAG_NEXT}.tar"],
        pause=by_name["pause.tar"],
        workload=by_name["workload.tar"],
    )


@pytest.fixture(scope="session")
def cluster(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The node, Ready, with the images imported; torn down at the end of the session (or
    when its start fails): see tests/cluster/node.py for what that undoes."""
    workdir = Path("/var/tmp") / f"otel-podnet-cluster-{os.getpid()}"
    with run_node(
        workdir,
        build_kube(),
        images=[images.pause, images.workload, images.agent, images.agent_next],
        pause_image=PAUSE_IMAGE,
    ) as node:
        yield node
    with contextlib.suppress(OSError):
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


@dataclass
class Collector:
    port: int
    file: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def endpoint(self) -> str:
        """The OTLP/gRPC endpoint as pods on the node reach it (the node's address)."""
        return f"http://{NODE_IP}:{self.port}"


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """collector-config/gateway.yaml as shipped, on the host, its OTLP/gRPC receiver on
    every address (the agent pod sends to the node's), a file exporter added, no batching
    (each of the agent's requests is one line), k8s_attributes out (the agent sets the
    Resource attributes itself; they are what the test checks)."""
    workdir = tmp_path_factory.mktemp("collector")
    grpc, http, prom = free_port(), free_port(), free_port()
    out = workdir / "metrics.jsonl"
    sets = [
        f"receivers.otlp.protocols.grpc.endpoint=0.0.0.0:{grpc}",
        f"receivers.otlp.protocols.http.endpoint=127.0.0.1:{http}",
        f"exporters.prometheus.endpoint=127.0.0.1:{prom}",
        f"exporters.file/test.path={out}",
        "exporters.file/test.flush_interval=100ms",
        "service.pipelines.metrics.processors=[memory_limiter]",
        "service.pipelines.metrics.exporters=[file/test,prometheus]",
        SELF_TELEMETRY_OFF,
    ]
    env = {"VENDOR_OTLP_ENDPOINT": "http://127.0.0.1:9", "VENDOR_API_KEY": "unused"}
    with run_collector(build_otelcol(), [CONFIG_DIR / "gateway.yaml"], sets, workdir, ready_port=grpc, env=env) as p:
        yield Collector(grpc, out, p)
