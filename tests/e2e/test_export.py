"""The real agent exporting over OTLP to the real Collector built from pinned modules,
started from collector-config/gateway.yaml: every pod under its own Resource, exact values
in the Collector's file and Prometheus outputs and on the agent's own /metrics."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from otel_podnet.abi import CG_HOST, CG_POD, SLOT_NODE
from otel_podnet.simnode import SimNode

from . import otlp_json
from .conftest import agent, agent_cgroups, agent_pod_ips, exchange, gateway, wait_for

RUNNING_AS_ROOT = pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (BPF, namespaces)")

OPENED_OUT = ("podnet.tcp.connections.opened", (("podnet.direction", "outbound"),))
OPENED_IN = ("podnet.tcp.connections.opened", (("podnet.direction", "inbound"),))
CLOSED_OUT = ("podnet.tcp.connections.closed", (("podnet.direction", "outbound"),))
ACTIVE_OUT = ("podnet.tcp.connections.active", (("podnet.direction", "outbound"),))
PAYLOAD_TX = ("podnet.tcp.payload", (("network.io.direction", "transmit"),))
PAYLOAD_RX = ("podnet.tcp.payload", (("network.io.direction", "receive"),))


def last_request(path: Path) -> dict[str, object]:
    reqs = otlp_json.requests(path)
    assert reqs, "the collector wrote nothing"
    return reqs[-1]


def pod_points(request: dict[str, object]) -> dict[str, tuple[dict[str, object], dict[otlp_json.Point, float]]]:
    out = {}
    for res, points in otlp_json.by_pod(request):
        out[str(res.get("k8s.pod.uid", "node"))] = (res, points)
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


@RUNNING_AS_ROOT
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_three_pods_exact_over_the_wire(otelcol: Path, node: SimNode, tmp_path: Path, protocol: str) -> None:
    web = node.add_pod("web-7d4b9c-x2x", "shop", labels={"app.kubernetes.io/name": "web"})
    api = node.add_pod("api-0", "shop")
    db = node.add_pod("db-0", "data")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    with gateway(otelcol, tmp_path / "col") as col:
        endpoint = col.grpc_endpoint if protocol == "grpc" else col.http_endpoint
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.cluster.name=e2e",
        }
        with agent(pods_file, env, prometheus=True) as a:
            exchange(node, web, api, 7100, n=12, up=40_000, down=3_000)
            exchange(node, api, db, 7101, n=30, up=500, down=7_000)

            def settled() -> bool:
                reqs = otlp_json.requests(col.file)
                if not reqs:
                    return False
                pts = pod_points(reqs[-1])
                return (
                    pts.get(db.uid, ({}, {}))[1].get(PAYLOAD_TX) == 210_000.0
                    and pts.get(web.uid, ({}, {}))[1].get(PAYLOAD_RX) == 36_000.0
                )

            wait_for(settled, what="the collector to receive the final figures")
            own = scrape(a.prom_port or 0)
            rc, err = a.stop()
        assert rc == 0, err
        time.sleep(0.5)
        request = last_request(col.file)
        collector_prom = scrape(col.prom)

    pods = pod_points(request)
    # exactly one ResourceMetrics per pod of the pods file, and the node's. The agent also
    # reports, by their cgroup only (no name), the pods of simulated nodes that test runs
    # build concurrently on this machine: those are not this test's.
    uids = [str(res.get("k8s.pod.uid", "node")) for res, _ in otlp_json.by_pod(request)]
    mine = [web.uid, api.uid, db.uid, "node"]
    assert sorted(u for u in uids if u in mine) == sorted(mine)
    named = [str(res["k8s.pod.uid"]) for res, _ in otlp_json.by_pod(request) if "k8s.pod.name" in res]
    assert sorted(named) == sorted([web.uid, api.uid, db.uid])
    res_web, p_web = pods[web.uid]
    assert res_web["k8s.pod.name"] == "web-7d4b9c-x2x" and res_web["k8s.namespace.name"] == "shop"
    assert res_web["k8s.node.name"] == "sim-node" and res_web["k8s.cluster.name"] == "e2e"
    assert res_web["service.name"] == "web" and res_web["service.namespace"] == "shop"
    assert pods[api.uid][0]["service.name"] == "api-0"
    assert pods["node"][0]["service.name"] == "otel-podnet"
    p_api, p_db = pods[api.uid][1], pods[db.uid][1]
    assert (p_web[OPENED_OUT], p_web[CLOSED_OUT], p_web[ACTIVE_OUT]) == (12, 12, 0)
    assert (p_web[PAYLOAD_TX], p_web[PAYLOAD_RX]) == (480_000, 36_000)
    assert (p_api[OPENED_IN], p_api[OPENED_OUT]) == (12, 30)
    assert (p_api[PAYLOAD_RX], p_api[PAYLOAD_TX]) == (480_000 + 210_000, 36_000 + 15_000)
    assert (p_db[OPENED_IN], p_db[PAYLOAD_RX], p_db[PAYLOAD_TX]) == (30, 15_000, 210_000)
    assert otlp_json.temporality(request, "podnet.tcp.payload") == 2  # cumulative
    assert ("podnet.agent.pods", ()) in pods["node"][1]

    # the same figures through the Collector's Prometheus exporter and the agent's own /metrics
    for text in (collector_prom, own):
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("podnet_tcp_payload_bytes_total{")
            and f'k8s_pod_uid="{db.uid}"' in ln
            and 'network_io_direction="transmit"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == 210_000
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("podnet_tcp_connections_opened_total{")
            and 'k8s_pod_name="api-0"' in ln
            and 'podnet_direction="inbound"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == 12


@RUNNING_AS_ROOT
def test_delta_sums_to_the_truth_and_removed_pod_final_once(otelcol: Path, node: SimNode, tmp_path: Path) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    gone = node.add_pod("gone")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    with gateway(otelcol, tmp_path / "col") as col:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        }
        with agent(pods_file, env, interval=0.3) as ag:
            for i in range(4):  # traffic spread over several intervals
                exchange(node, a, b, 7200 + i, n=5, up=10_000, down=1_000)
                time.sleep(0.4)
            exchange(node, gone, b, 7210, n=3, up=2_000, down=100)
            time.sleep(1.0)
            node.remove_pod(gone)
            node.write_pod_list(pods_file)
            time.sleep(2.0)
            rc, err = ag.stop()
        assert rc == 0, err

        def delivered() -> float:  # a's payload over every request the Collector has written
            return sum(
                pts.get(PAYLOAD_TX, 0)
                for req in otlp_json.requests(col.file)
                for res, pts in otlp_json.by_pod(req)
                if res.get("k8s.pod.uid") == a.uid
            )

        # the Collector may still be writing the last requests on a busy machine
        wait_for(lambda: delivered() >= 20 * 10_000, what="the Collector to write every request")
        time.sleep(0.5)
        reqs = otlp_json.requests(col.file)

    totals: dict[str, float] = {}
    gone_seen = []
    for req in reqs:
        assert otlp_json.temporality(req, "podnet.tcp.payload") == 1  # delta
        for res, pts in otlp_json.by_pod(req):
            uid = str(res.get("k8s.pod.uid", "node"))
            if uid == gone.uid:
                gone_seen.append(pts)
                # to its last export, the departed pod keeps its identity
                assert (res.get("k8s.pod.name"), res.get("k8s.namespace.name")) == ("gone", "default")
            totals[(uid)] = totals.get(uid, 0) + pts.get(PAYLOAD_TX, 0)
            totals[uid + "/opened"] = totals.get(uid + "/opened", 0) + pts.get(OPENED_OUT, 0)
    assert totals[a.uid] == 20 * 10_000 and totals[a.uid + "/opened"] == 20
    assert totals[b.uid] == 20 * 1_000 + 3 * 100
    assert totals[gone.uid] == 3 * 2_000 and totals[gone.uid + "/opened"] == 3
    # the departed pod: present while it lived, then gone from every later request
    last_with = max(
        i for i, req in enumerate(reqs) if any(r.get("k8s.pod.uid") == gone.uid for r, _ in otlp_json.by_pod(req))
    )
    assert last_with < len(reqs) - 1


@RUNNING_AS_ROOT
def test_collector_down_then_back_exact(otelcol: Path, node: SimNode, tmp_path: Path) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    grpc_port = None
    with gateway(otelcol, tmp_path / "col1") as col:
        grpc_port = col.grpc
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
        ag_ctx = agent(pods_file, env, interval=0.5)
        ag = ag_ctx.__enter__()
        exchange(node, a, b, 7300, n=5, up=10_000, down=500)
        wait_for(
            lambda: (
                bool(otlp_json.requests(col.file))
                and pod_points(last_request(col.file)).get(a.uid, ({}, {}))[1].get(PAYLOAD_TX) == 50_000
            ),
            what="first figures",
        )
    try:
        # the collector is gone for 60 s while traffic goes on
        t_end = time.monotonic() + 60
        i = 0
        while time.monotonic() < t_end:
            exchange(node, a, b, 7301 + i, n=2, up=10_000, down=500)
            i += 1
            time.sleep(2)
        assert ag.proc.poll() is None, "the agent died while the collector was down"
        with gateway(otelcol, tmp_path / "col2", grpc_port=grpc_port) as col2:
            want = 50_000 + 2 * i * 10_000
            wait_for(lambda: bool(otlp_json.requests(col2.file)), timeout=30, what="the first export after the outage")
            first = pod_points(otlp_json.requests(col2.file)[0])
            assert first[a.uid][1][PAYLOAD_TX] == want
            assert first[a.uid][1][OPENED_OUT] == 5 + 2 * i
            rc, err = ag.stop()
        assert rc == 0, err
        assert "OTLP export failed" in err
        assert err.count("OTLP export failed") <= 3  # logged at a bounded rate
    finally:
        ag_ctx.__exit__(None, None, None)


def test_bad_endpoint_and_protocol_exit_2(tmp_path: Path) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: PodList\nitems: []\n")
    import os
    import sys

    for env, needle in (
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"}, "OTEL_EXPORTER_OTLP_ENDPOINT 'not a url': expected a URL"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "OTEL_EXPORTER_OTLP_PROTOCOL 'carrier-pigeon': expected"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "otel_podnet", "run", "--pods-file", str(pods)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        assert (
            r.stderr.strip().splitlines()[-1] == f"otel-podnet: {needle}" or needle in r.stderr.strip().splitlines()[-1]
        )
        assert "Traceback" not in r.stderr


def make_pki(d: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=otel-podnet test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        run(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
        )
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@RUNNING_AS_ROOT
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_endpoint_with_a_test_ca(otelcol: Path, node: SimNode, tmp_path: Path, mutual: bool) -> None:
    pki = make_pki(tmp_path / "pki")
    a, b = node.add_pod("a"), node.add_pod("b")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    tls = [
        f"receivers.otlp.protocols.grpc.tls.cert_file={pki['server.pem']}",
        f"receivers.otlp.protocols.grpc.tls.key_file={pki['server.key']}",
    ]
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki["ca.pem"])}
    if mutual:
        tls.append(f"receivers.otlp.protocols.grpc.tls.client_ca_file={pki['ca.pem']}")
        env |= {
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki["client.pem"]),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki["client.key"]),
        }
    with gateway(otelcol, tmp_path / "col", extra_sets=tls) as col:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"https://localhost:{col.grpc}"
        with agent(pods_file, env) as ag:
            exchange(node, a, b, 7400, n=4, up=3_000, down=300)
            wait_for(
                lambda: (
                    bool(otlp_json.requests(col.file))
                    and pod_points(last_request(col.file)).get(a.uid, ({}, {}))[1].get(PAYLOAD_TX) == 12_000
                ),
                what="figures over TLS",
            )
            rc, err = ag.stop()
        assert rc == 0, err
        assert "OTLP export failed" not in err


# The pod churn test's cycles of 10 pods. The first 500 warm the agent up: its RSS grows by
# about 1 MiB while the counting table (505 slots, two per pod) is first used through, with no
# more Python objects kept (tracemalloc: 125,000-129,000 blocks from the first few hundred
# pods to 2,000). Growth is measured after that, over 1,000 more: 150-250 KiB measured, flat
# from then on (without otel_podnet.memory's fixed allocator thresholds, the heap grew by 2.2
# MiB over the first 2,000 pods).
WARM_CYCLES = 50
CHURN_CYCLES = 150


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@RUNNING_AS_ROOT
def test_1500_pod_cycles_leave_nothing_behind(otelcol: Path, tmp_path: Path) -> None:
    """Pods come and go (kubelet-named cgroups and the PodList, 10 at a time): every one is
    released, in the agent's memory, its exports and the kernel's maps."""
    import os
    import uuid

    import yaml

    from otel_podnet.cgroups import find_cgroup2_mount

    root = find_cgroup2_mount()
    tag = uuid.uuid4().hex[:6]
    top = root / f"kubepods-e2e{tag}.slice"  # a kubepods subtree of its own, removed below
    # Loopback is no network traffic (the kernel skips it), so the pods' one datagram leaves
    # through a veth in a namespace of the test's own, to an address on its link.
    netns = f"pnchurn{tag}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    pods_file = tmp_path / "pods.yaml"
    pods_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "PodList", "items": []}))
    top.mkdir()
    try:
        for cmd in (
            "link add churn0 type veth peer name churn1",
            "addr add 198.19.255.1/24 dev churn0",
            "link set churn0 up",
            "link set churn1 up",
            "neigh add 198.19.255.2 lladdr 02:00:00:00:00:02 dev churn0 nud permanent",  # no ARP
        ):
            subprocess.run(["ip", "-n", netns, *cmd.split()], check=True)
        with gateway(otelcol, tmp_path / "col") as col:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint}
            with agent(pods_file, env, interval=0.2, prometheus=True) as ag:
                samples = {}
                live: tuple[dict[int, tuple[int, int]], list[str]] = ({}, [])
                live_batch: tuple[set[int], list[str]] = (set(), [])
                cgids: dict[int, str] = {}  # cgroup id -> pod uid, of every pod made here
                ips: set[str] = set()
                for cycle in range(CHURN_CYCLES):
                    batch = [(str(uuid.uuid4()), f"198.19.{cycle}.{i + 1}") for i in range(10)]
                    dirs = []
                    for uid, _ in batch:
                        d = top / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
                        d.mkdir()
                        dirs.append(d)
                        cgids[os.stat(d).st_ino] = uid
                        # a socket in the pod's cgroup: the kernel gives the cgroup a slot
                        subprocess.run(
                            ["ip", "netns", "exec", netns, "bash", "-c", "echo x > /dev/udp/198.19.255.2/9"],
                            check=True,
                            preexec_fn=lambda d=d: (d / "cgroup.procs").write_text(str(os.getpid())),
                        )
                    items = [
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {"name": f"p-{uid[:8]}", "namespace": "churn", "uid": uid},
                            "spec": {"nodeName": "sim-node"},
                            "status": {"phase": "Running", "podIP": ip},
                        }
                        for uid, ip in batch
                    ]
                    ips |= {ip for _, ip in batch}
                    pods_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "PodList", "items": items}))
                    time.sleep(0.3)
                    if cycle == 5:
                        live_batch = {os.stat(d).st_ino for d in dirs}, sorted(ip for _, ip in batch)
                        live = agent_cgroups(ag.proc.pid), agent_pod_ips(ag.proc.pid)
                    for d in dirs:
                        d.rmdir()
                    pods_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "PodList", "items": []}))
                    time.sleep(0.3)
                    if cycle in (WARM_CYCLES - 1, CHURN_CYCLES - 1):
                        time.sleep(1.0)
                        samples[cycle] = rss_kib(ag.proc.pid)
                metrics = scrape(ag.prom_port or 0)
                left = agent_cgroups(ag.proc.pid), agent_pod_ips(ag.proc.pid)
                rc, err = ag.stop()
            assert rc == 0, err
            time.sleep(0.5)
            last = last_request(col.file)
    finally:
        for d in sorted(top.glob("*"), reverse=True):
            if d.is_dir():
                d.rmdir()
        top.rmdir()
        subprocess.run(["ip", "netns", "delete", netns], check=False)
    # nothing of the 1500 pods is left in the last request, the agent's view or the kernel.
    # (The agent also sees, by their cgroups, the pods of test runs going on concurrently on
    # this machine: only this test's own cgroups, UIDs and IPs are looked for.)
    assert len(cgids) == len(set(cgids.values())) == len(ips) == 10 * CHURN_CYCLES
    reported = [r.get("k8s.pod.uid") for r, _ in otlp_json.by_pod(last)]
    assert reported.count(None) == 1  # the node
    assert set(cgids.values()) & set(reported) == set()  # a pod with a slot left would be here
    pods_line = next(ln for ln in metrics.splitlines() if ln.startswith("podnet_agent_pods{"))
    assert float(pods_line.rsplit(" ", 1)[1]) == 0
    # while a batch lived: each of its 10 cgroups a pod cgroup on a slot of its own, its 10 IPs
    # in the IP map; at the end, none of the 500 cgroups nor IPs
    batch_cgids, batch_ips = live_batch
    live_entries = {c: v for c, v in live[0].items() if c in cgids}
    assert sorted(live_entries) == sorted(batch_cgids)
    assert sorted(kind for _, kind in live_entries.values()) == [CG_POD] * 10
    assert len({slot for slot, _ in live_entries.values()} - {SLOT_NODE}) == 10
    assert sorted(ip for ip in live[1] if ip in ips) == batch_ips
    # A cgroup that was gone before the agent classified it stays a host cgroup on the node
    # slot until the periodic sweep of dead host cgroups: no slot, nothing counted for it.
    assert [v for c, v in left[0].items() if c in cgids and v != (SLOT_NODE, CG_HOST)] == []
    assert [ip for ip in left[1] if ip in ips] == []
    # memory after the first 500 pods and after 1000 more: under 1 KiB per pod (a PodInfo
    # alone, kept, would be more)
    grown = samples[CHURN_CYCLES - 1] - samples[WARM_CYCLES - 1]
    assert grown < 1024, f"RSS (KiB) grew by {grown} over {10 * (CHURN_CYCLES - WARM_CYCLES)} pods: {samples}"


def _grpc_threads(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            pass  # ended meanwhile
    return [n for n in names if n.startswith(("event_engine", "grpc_global_tim", "lifeguard"))]


def _connections_to(pid: int, port: int) -> int:
    """The process's TCP sockets connected to ``port`` (/proc/net/tcp and tcp6 by inode:
    gRPC connects an IPv6 socket to the v4-mapped address)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    n = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[2].endswith(f":{port:04X}") and f[3] == "01" and f[9] in inodes:  # ESTABLISHED
                n += 1
    return n


@RUNNING_AS_ROOT
def test_grpc_at_long_intervals_opens_a_channel_per_export(otelcol: Path, node: SimNode, tmp_path: Path) -> None:
    """At intervals of 5 s or more, OTLP/gRPC builds its channel for each export and closes
    it after (otel_podnet.exporters.otlp_proto.ChannelPerExport, issue 10): between exports
    the agent holds no connection to the Collector and runs none of gRPC's threads, whose
    timers cost CPU while a channel exists. The figures stay exact over the wire."""
    web, api = node.add_pod("web-0", "shop"), node.add_pod("api-0", "shop")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        with agent(pods_file, env, interval=30.0) as a:
            wait_for(lambda: len(otlp_json.requests(col.file)) == 1, what="the export at start")
            grpc_port = int(col.grpc_endpoint.rsplit(":", 1)[1])
            wait_for(lambda: _connections_to(a.proc.pid, grpc_port) == 0, what="the channel closed")
            assert _grpc_threads(a.proc.pid) == []
            exchange(node, web, api, 7150, n=4, up=5_000, down=700)
            rc, err = a.stop()  # the final export carries the totals
        assert rc == 0, err
        time.sleep(0.5)
        reqs = otlp_json.requests(col.file)
    assert len(reqs) == 2  # at start and at the end: nothing in between at a 30 s interval
    pods = pod_points(reqs[-1])
    p_web, p_api = pods[web.uid][1], pods[api.uid][1]
    assert (p_web[OPENED_OUT], p_web[CLOSED_OUT], p_web[PAYLOAD_TX], p_web[PAYLOAD_RX]) == (4, 4, 20_000, 2_800)
    assert (p_api[OPENED_IN], p_api[PAYLOAD_RX], p_api[PAYLOAD_TX]) == (4, 20_000, 2_800)
