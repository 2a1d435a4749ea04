"""e2e fixtures: the real Collector, a simulated node, and the real agent process."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_podnet.cgroups import find_cgroup2_mount
from otel_podnet.simnode import SimNode, SimPod

from .apiserver import kube_apiserver, kube_bin_dir  # noqa: F401  (fixtures)
from .collector import CONFIG_DIR, SELF_TELEMETRY_OFF, build_otelcol, free_port, run_collector


def agent_map(pid: int, name: str) -> list[tuple[bytes, bytes]] | None:
    """(key, value) of every entry of one of the agent's BPF maps, found through the agent's
    own map fds (other agents on this machine have maps of the same names); None when the
    agent holds no such map (yet)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^map_id:\s*(\d+)", text, re.M)
        if m:
            ids.add(m.group(1))
    for map_id in sorted(ids):
        show = subprocess.run(["bpftool", "-j", "map", "show", "id", map_id], capture_output=True, text=True)
        if show.returncode != 0 or json.loads(show.stdout).get("name") != name:
            continue
        out = subprocess.run(["bpftool", "-j", "map", "dump", "id", map_id], capture_output=True, check=True).stdout
        return [(bytes(int(b, 16) for b in e["key"]), bytes(int(b, 16) for b in e["value"])) for e in json.loads(out)]
    return None


def agent_cgroups(pid: int) -> dict[int, tuple[int, int]]:
    """The agent's podnet_cgroups map: cgroup id -> (slot, kind)."""
    entries = agent_map(pid, "podnet_cgroups")
    assert entries is not None, f"agent {pid} holds no podnet_cgroups map"
    out = {}
    for key, value in entries:
        slot, kind = struct.unpack_from("<II", value)
        out[struct.unpack("<Q", key)[0]] = (slot, kind)
    return out


def agent_pod_ips(pid: int) -> list[str]:
    """The keys of the agent's podnet_pod_ips map, IPv4 unmapped from ::ffff:a.b.c.d."""
    entries = agent_map(pid, "podnet_pod_ips")
    assert entries is not None, f"agent {pid} holds no podnet_pod_ips map"
    out = []
    for key, _ in entries:
        addr = ipaddress.IPv6Address(key)
        out.append(str(addr.ipv4_mapped or addr))
    return out


@pytest.fixture(scope="session")
def otelcol() -> Path:
    return build_otelcol()


@dataclass
class Collector:
    grpc: int
    http: int
    prom: int
    file: Path
    proc: subprocess.Popen[bytes]

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http}"


@contextlib.contextmanager
def gateway(
    binary: Path, workdir: Path, grpc_port: int | None = None, extra_sets: Sequence[str] = ()
) -> Iterator[Collector]:
    """collector-config/gateway.yaml as shipped, with its listeners on free loopback ports,
    k8s_attributes out of the pipeline (no cluster here), no batching (so each request the
    agent sends is one line of the file exporter) and a file exporter added."""
    grpc, http, prom = grpc_port or free_port(), free_port(), free_port()
    out = workdir / "metrics.jsonl"
    sets = [
        f"receivers.otlp.protocols.grpc.endpoint=127.0.0.1:{grpc}",
        f"receivers.otlp.protocols.http.endpoint=127.0.0.1:{http}",
        f"exporters.prometheus.endpoint=127.0.0.1:{prom}",
        f"exporters.file/test.path={out}",
        "exporters.file/test.flush_interval=100ms",
        "service.pipelines.metrics.processors=[memory_limiter]",
        "service.pipelines.metrics.exporters=[file/test,prometheus]",
        SELF_TELEMETRY_OFF,
        *extra_sets,
    ]
    env = {"VENDOR_OTLP_ENDPOINT": "http://127.0.0.1:9", "VENDOR_API_KEY": "unused"}
    with run_collector(binary, [CONFIG_DIR / "gateway.yaml"], sets, workdir, ready_port=grpc, env=env) as proc:
        yield Collector(grpc, http, prom, out, proc)


@pytest.fixture
def node() -> Iterator[SimNode]:
    n = SimNode(find_cgroup2_mount())
    try:
        yield n
    finally:
        n.cleanup()


@dataclass
class AgentProc:
    proc: subprocess.Popen[str]
    prom_port: int | None

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:  # not listening yet, or 503 starting
        return False


@contextlib.contextmanager
def agent(
    pods_file: Path | None,
    env: Mapping[str, str],
    exporters: Sequence[str] = ("otlp",),
    interval: float = 0.5,
    prometheus: bool = False,
    kubeconfig: Path | None = None,
) -> Iterator[AgentProc]:
    """The agent process; its pods come from ``pods_file``, or from the API server that
    ``kubeconfig`` points at (pass None as ``pods_file``)."""
    prom_port = free_port() if prometheus else None
    health_port = free_port()
    source = ["--pods-file", str(pods_file)] if pods_file is not None else []
    if kubeconfig is not None:
        source += ["--kubeconfig", str(kubeconfig)]
    args = [
        sys.executable,
        "-m",
        "otel_podnet",
        "run",
        *source,
        "--interval",
        str(interval),
        "--node-name",
        "sim-node",
        "--log-level",
        "info",
        "--health-address",
        f"127.0.0.1:{health_port}",
    ]
    for e in exporters:
        args += ["--exporter", e]
    if prom_port:
        args += ["--exporter", "prometheus", "--prometheus-address", f"127.0.0.1:{prom_port}"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    try:
        # Ready (/readyz) once its programs are attached and a first snapshot was taken: what
        # the test does from then on is counted. A fixed pause was not enough on a busy
        # machine, where a test's first connections came and went before the attach.
        deadline = time.monotonic() + 60
        while not _ready(health_port):
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent not ready after 60 s")
            time.sleep(0.1)
        yield AgentProc(proc, prom_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def exchange(node: SimNode, client: SimPod, server: SimPod, port: int, n: int, up: int, down: int) -> None:
    srv = node.workload(server, "tcp-server", addr=server.ip4, port=port, count=n, recv=up, send=down)
    node.wait_ready(srv)
    node.result(node.workload(client, "tcp-client", addr=server.ip4, port=port, count=n, send=up, recv=down))
    node.result(srv)


def wait_for(check: object, timeout: float = 60.0, what: str = "") -> None:
    """Until ``check()`` holds. The default is generous: on a machine busy with other work
    (other test runs, builds) the agent and the Collector can take many seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def jdump(obj: object) -> str:
    return json.dumps(obj, indent=1, default=str)[:3000]
