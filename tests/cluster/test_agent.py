"""The agent's image on the real node: installed with Helm, Ready under the kubelet with only
its named capabilities, and every figure it exports exact for pods the kubelet made.

Workloads (namespace ``shop``), each reporting what it did (its last JSON line):

- Deployment ``web``, 2 replicas of ``tcp-server`` behind the Service ``web``;
- Job ``client``: N connections with known payloads to the Service's ClusterIP;
- ``hostnet``, a hostNetwork pod, connecting to the ClusterIP from the node's network;
- ``duo``, one pod of two client containers;
- ``refused``, connecting to a closed port of the node.

Clients wait for a ``go`` file until every pod's interface carries nothing but IP (static
neighbours, no IPv6), so that the host-side veth counters, minus Ethernet headers, are the
IP bytes the agent must report. Payloads stay under one MSS (no segmentation offload).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import otlp_json

from .conftest import (
    AGENT_REPOSITORY,
    AGENT_TAG,
    AGENT_TAG_NEXT,
    REPO,
    REPORT,
    WORKLOAD_IMAGE,
    Collector,
)
from .node import NODE_IP, NODE_NAME, POD_CIDR, Node
from .workloads import (
    ETH_HLEN,
    GATED,
    go,
    host_veth,
    mac_in,
    pod_pids,
    quiet_links,
    sandbox_pid,
    veth_counters,
    wait,
    wait_phase,
    wait_report,
)

NS = "shop"
AGENT_NS = "otel-podnet"
PORT = 8080
N_JOB, N_HOST, N_A, N_B, N_REFUSED = 6, 3, 2, 4, 5
UP, DOWN = 700, 1300  # bytes per connection, each under one MSS
CLOSED_PORT = 1  # nothing listens there on the node's address
GATEWAY = POD_CIDR.rsplit(".", 1)[0] + ".1"
CAPS = {"NET_ADMIN": 12, "PERFMON": 38, "BPF": 39}

Figures = dict[otlp_json.Point, float]


def helm(node: Node, *args: str) -> str:
    proc = subprocess.run(
        [str(node.api_.helm_path), f"--kubeconfig={node.api_.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def agent_pod(node: Node, not_uid: str | None = None) -> Any:
    """The agent's pod, Ready (its readiness probe passed), other than ``not_uid``."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        pods = node.kubectl_json("get", "pods", "-n", AGENT_NS, "-l", "app.kubernetes.io/name=otel-podnet")["items"]
        for p in pods:
            if p["metadata"]["uid"] == not_uid or p["metadata"].get("deletionTimestamp"):
                continue
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            if conds.get("Ready") == "True":
                found.update(p)
                return True
        return False

    try:
        node.wait(ready, 240, "the agent pod Ready")
    except TimeoutError:
        out = node.kubectl("describe", "pods", "-n", AGENT_NS, check=False)
        raise AssertionError(f"agent pod not Ready:\n{out[-5000:]}") from None
    return found


def bpf_ids(pid: int) -> tuple[set[int], set[int]]:
    """The BPF programs and links the process holds (by id), from its fdinfo."""
    progs, links = set(), set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        if m := re.search(r"^link_id:\s*(\d+)", text, re.M):
            links.add(int(m.group(1)))
        elif m := re.search(r"^prog_id:\s*(\d+)", text, re.M):
            progs.add(int(m.group(1)))
    return progs, links


def bpftool_ids(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, check=True).stdout
    return {int(e["id"]) for e in json.loads(out or "[]")}


def caps(pid: int, field_name: str) -> set[int]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field_name + ":"))
    mask = int(line.split()[1], 16)
    return {bit for bit in range(64) if mask >> bit & 1}


# --------------------------------------------------------------------------------------
# The exports


def pod_exports(collector: Collector, ns: str, name: str) -> list[tuple[dict[str, Any], Figures]]:
    """Every request's Resource of that pod, oldest first: (Resource attributes, points)."""
    out = []
    for req in otlp_json.requests(collector.file):
        for res, points in otlp_json.by_pod(req):
            if res.get("k8s.pod.name") == name and res.get("k8s.namespace.name") == ns:
                out.append((res, points))
    return out


def figure(points: Figures, metric: str, **attrs: str) -> float:
    key = (metric, tuple(sorted((k.replace("_", "."), v) for k, v in attrs.items())))
    return points.get(key, 0.0)


def summary(points: Figures) -> dict[str, float]:
    """The figures the test knows the truth of, by short names."""
    d = "podnet.direction"
    io = "network.io.direction"
    return {
        "opened_in": points.get(("podnet.tcp.connections.opened", ((d, "inbound"),)), 0.0),
        "opened_out": points.get(("podnet.tcp.connections.opened", ((d, "outbound"),)), 0.0),
        "closed_in": points.get(("podnet.tcp.connections.closed", ((d, "inbound"),)), 0.0),
        "closed_out": points.get(("podnet.tcp.connections.closed", ((d, "outbound"),)), 0.0),
        "refused": points.get(("podnet.tcp.connections.failed", (("error.type", "refused"),)), 0.0),
        "payload_rx": points.get(("podnet.tcp.payload", ((io, "receive"),)), 0.0),
        "payload_tx": points.get(("podnet.tcp.payload", ((io, "transmit"),)), 0.0),
        "ip_rx": points.get(("podnet.network.io", ((io, "receive"), ("network.transport", "tcp"))), 0.0),
        "ip_tx": points.get(("podnet.network.io", ((io, "transmit"), ("network.transport", "tcp"))), 0.0),
    }


def start_times(collector: Collector, ns: str, name: str) -> set[int]:
    """The start times of the pod's cumulative points in the latest request carrying it."""
    out: set[int] = set()
    for req in otlp_json.requests(collector.file):
        found: set[int] = set()
        for rm in req.get("resourceMetrics", []):
            res = otlp_json.attrs(rm.get("resource", {}).get("attributes"))
            if res.get("k8s.pod.name") != name or res.get("k8s.namespace.name") != ns:
                continue
            for sm in rm.get("scopeMetrics", []):
                for m in sm.get("metrics", []):
                    if m["name"] == "podnet.tcp.connections.opened":
                        found.update(int(dp["startTimeUnixNano"]) for dp in m["sum"]["dataPoints"])
        out = found or out
    return out


def wait_figures(collector: Collector, ns: str, name: str, want: dict[str, float], timeout: float = 90) -> Any:
    """Until the pod's latest exported figures equal ``want``; its Resource and figures."""
    last: tuple[dict[str, Any], dict[str, float]] = ({}, {})

    def check() -> bool:
        nonlocal last
        exports = pod_exports(collector, ns, name)
        if not exports:
            return False
        res, points = exports[-1]
        last = (res, summary(points))
        return all(last[1][k] == v for k, v in want.items())

    try:
        wait(check, timeout, f"{ns}/{name}'s figures")
    except AssertionError:
        diff = {k: (last[1].get(k), v) for k, v in want.items() if last[1].get(k) != v}
        raise AssertionError(f"{ns}/{name}: exported != truth (got, want): {diff}; all: {last[1]}") from None
    return last


# --------------------------------------------------------------------------------------
# Install and the workloads


def helm_install(node: Node, collector: Collector, tag: str) -> float:
    """README "Deploy", as a user runs it (the image from the local store, not pulled; the
    node's cgroup v2 at /sys/fs/cgroup/unified); seconds from helm install to Ready."""
    node.kubectl("create", "namespace", AGENT_NS)
    node.kubectl("label", "namespace", AGENT_NS, "pod-security.kubernetes.io/enforce=privileged")
    start = time.monotonic()
    helm(
        node,
        "install",
        "otel-podnet",
        str(REPO / "deploy" / "helm" / "otel-podnet"),
        "-n",
        AGENT_NS,
        "--set",
        f"image.repository={AGENT_REPOSITORY}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        f"otlp.endpoint={collector.endpoint}",
        "--set",
        f"hostCgroupRoot={node.cgroup2}",
        "--set",
        "interval=2",
    )
    rollout_status(node)
    agent_pod(node)
    return time.monotonic() - start


def rollout_status(node: Node) -> None:
    node.kubectl("-n", AGENT_NS, "rollout", "status", "daemonset/otel-podnet", "--timeout=240s")


def _server_container(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": WORKLOAD_IMAGE,
        "imagePullPolicy": "Never",
        "args": [
            "tcp-server",
            "--addr",
            "0.0.0.0",
            "--port",
            str(PORT),
            "--count",
            "0",
            *("--recv", str(UP)),
            "--send",
            str(DOWN),
        ],
        "ports": [{"containerPort": PORT}],
    }


def _client_container(name: str, addr: str, port: int, count: int, mode: str = "tcp-client") -> dict[str, Any]:
    args = [mode, "--addr", addr, "--port", str(port), "--count", str(count)]
    if mode == "tcp-client":
        args += ["--send", str(UP), "--recv", str(DOWN)]
    return {
        "name": name,
        "image": WORKLOAD_IMAGE,
        "imagePullPolicy": "Never",
        "command": GATED,
        "args": args,
    }


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": containers, **spec},
    }


def apply(node: Node, *objs: dict[str, Any]) -> None:
    node.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def job(name: str, cluster_ip: str, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [_client_container("client", cluster_ip, 80, count)],
                }
            },
        },
    }


def job_pod(node: Node, name: str) -> Any:
    found: list[Any] = []

    def check() -> bool:
        items = node.kubectl_json("get", "pods", "-n", NS, "-l", f"job-name={name}")["items"]
        found[:] = items
        return len(items) == 1

    node.wait(check, 120, f"job {name}'s pod")
    return wait_phase(node, NS, found[0]["metadata"]["name"], "Running")


@dataclass
class Scenario:
    node: Node
    collector: Collector
    install_seconds: float
    agent: Any
    agent_pid: int
    cluster_ip: str
    pods: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, dict[str, float]] = field(default_factory=dict)
    veths: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, dict[str, int]] = field(default_factory=dict)
    final: dict[str, dict[str, int]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def scenario(cluster: Node, collector: Collector) -> Iterator[Scenario]:
    node = cluster
    seconds = helm_install(node, collector, AGENT_TAG)
    REPORT["helm install to Ready (s)"] = round(seconds, 1)
    agent = agent_pod(node)
    (agent_pid,) = pod_pids(node, agent)
    node.kubectl("create", "namespace", NS)
    labels = {"app.kubernetes.io/name": "web"}
    apply(
        node,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"automountServiceAccountToken": False, "containers": [_server_container("web")]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": PORT}]},
        },
    )
    cluster_ip = node.kubectl_json("get", "service", "-n", NS, "web")["spec"]["clusterIP"]
    apply(
        node,
        job("client", cluster_ip, N_JOB),
        _pod("hostnet", [_client_container("client", cluster_ip, 80, N_HOST)], hostNetwork=True),
        _pod(
            "duo",
            [_client_container("a", cluster_ip, 80, N_A), _client_container("b", cluster_ip, 80, N_B)],
        ),
        _pod("refused", [_client_container("client", NODE_IP, CLOSED_PORT, N_REFUSED, mode="connect-fail")]),
    )
    s = Scenario(node, collector, seconds, agent, agent_pid, cluster_ip)
    try:
        _run_workloads(s)
        yield s
    finally:
        node.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s", check=False)


def _run_workloads(s: Scenario) -> None:
    node = s.node

    def web_pods() -> list[Any]:
        items = node.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=web")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    node.wait(lambda: len(web_pods()) == 2, 120, "two web pods")
    for p in web_pods():
        s.pods[p["metadata"]["name"]] = wait_phase(node, NS, p["metadata"]["name"], "Running")
    s.pods["client"] = job_pod(node, "client")
    for name in ("hostnet", "duo", "refused"):
        s.pods[name] = wait_phase(node, NS, name, "Running")
    # Every pod on the bridge (all but hostnet, and the agent's) quiet but for IP, then
    # the baselines.
    bridged = {n: p for n, p in s.pods.items() if n != "hostnet"}
    links = {}
    for name, pod in [*bridged.items(), ("agent", s.agent)]:
        pid = sandbox_pid(node, pod)
        links[name] = (pid, pod["status"]["podIP"], mac_in(pid))
        if name != "agent":
            s.veths[name] = host_veth(pid)
    quiet_links(node, links, GATEWAY)
    time.sleep(1)
    s.baseline = {name: veth_counters(dev) for name, dev in s.veths.items()}
    clients = [pid for name in ("client", "hostnet", "duo", "refused") for pid in pod_pids(node, s.pods[name])]
    for pid in clients:
        go(pid)
    # Their own reports: the clients' when they are done, then the servers' totals.
    job_name = s.pods["client"]["metadata"]["name"]
    reports = {
        "client": [wait_report(node, NS, job_name, "connected", N_JOB)],
        "hostnet": [wait_report(node, NS, "hostnet", "connected", N_HOST)],
        "duo": [
            wait_report(node, NS, "duo", "connected", N_A, container="a"),
            wait_report(node, NS, "duo", "connected", N_B, container="b"),
        ],
        "refused": [wait_report(node, NS, "refused", "ECONNREFUSED", N_REFUSED)],
    }
    total = N_JOB + N_HOST + N_A + N_B
    webs = [n for n in s.pods if n.startswith("web-")]

    def served() -> bool:
        got = 0
        for w in webs:
            lines = [x for x in node.kubectl("logs", "-n", NS, w).splitlines() if x.startswith("{")]
            got += json.loads(lines[-1])["accepted"] if lines else 0
        return got == total

    node.wait(served, 120, f"the web servers to serve {total} connections")
    for w in webs:
        lines = [x for x in node.kubectl("logs", "-n", NS, w).splitlines() if x.startswith("{")]
        reports[w] = [json.loads(lines[-1])] if lines else [{"accepted": 0, "received": 0, "sent": 0}]
    for name, rs in reports.items():
        t = {k: 0.0 for k in summary({})}
        for r in rs:
            if "accepted" in r:
                t["opened_in"] += r["accepted"]
                t["closed_in"] += r["accepted"]
                t["payload_rx"] += r["received"]
                t["payload_tx"] += r["sent"]
            elif "connected" in r:
                t["opened_out"] += r["connected"]
                t["closed_out"] += r["connected"]
                t["payload_tx"] += r["sent"]
                t["payload_rx"] += r["received"]
            else:
                t["refused"] += r.get("ECONNREFUSED", 0)
        del t["ip_rx"], t["ip_tx"]
        s.truth[name] = t
    # Every connection is done: the interfaces' final counts, then the clients may end.
    s.final = {name: veth_counters(dev) for name, dev in s.veths.items()}
    for pid in clients:
        go(pid, "done")


# --------------------------------------------------------------------------------------
# The tests


def test_agent_ready_with_only_its_capabilities(scenario: Scenario) -> None:
    s = scenario
    pod = s.agent
    (ctr,) = pod["spec"]["containers"]
    sc = ctr["securityContext"]
    assert sc.get("privileged") is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sorted(sc["capabilities"]["add"]) == ["BPF", "NET_ADMIN", "PERFMON"]
    assert pod["spec"].get("hostNetwork") in (None, False)
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True and status["restartCount"] == 0
    assert status["image"].endswith(f"{AGENT_REPOSITORY}:{AGENT_TAG}")
    # What the kernel holds for the agent's process under runc: exactly those three
    # capabilities (bounding and effective), and its root filesystem read-only.
    assert caps(s.agent_pid, "CapBnd") == set(CAPS.values())
    assert caps(s.agent_pid, "CapEff") == set(CAPS.values())
    root = next(
        line.split(" ")
        for line in Path(f"/proc/{s.agent_pid}/mountinfo").read_text().splitlines()
        if line.split(" ")[4] == "/"
    )
    assert "ro" in root[5].split(","), root
    progs, links = bpf_ids(s.agent_pid)
    assert progs or links, "the agent holds no BPF program"


def test_every_pod_figure_exact(scenario: Scenario) -> None:
    s = scenario
    for name, want in s.truth.items():
        wait_figures(s.collector, NS, s.pods[name]["metadata"]["name"], want)


def test_ip_bytes_equal_the_pod_interfaces(scenario: Scenario) -> None:
    """On the wire, as the host side of each pod's veth counted it, less Ethernet headers:
    what the pod received is what its veth sent, and the other way round."""
    s = scenario
    for name in s.veths:
        now, base = s.final[name], s.baseline[name]
        want = {
            "ip_rx": (now["tx_bytes"] - base["tx_bytes"]) - ETH_HLEN * (now["tx_packets"] - base["tx_packets"]),
            "ip_tx": (now["rx_bytes"] - base["rx_bytes"]) - ETH_HLEN * (now["rx_packets"] - base["rx_packets"]),
        }
        wait_figures(s.collector, NS, s.pods[name]["metadata"]["name"], want)


PeerKey = tuple[tuple[str, str], ...]


def by_peer(points: Figures, metric: str, **attrs: str) -> dict[PeerKey, float]:
    """The metric's series with those attributes, by the rest of their attributes (the peer's)."""
    want = {(k.replace("_", "."), v) for k, v in attrs.items()}
    out: dict[PeerKey, float] = {}
    for (name, point_attrs), value in points.items():
        if name == metric and want <= set(point_attrs):
            peer = tuple(a for a in point_attrs if a not in want)
            out[peer] = out.get(peer, 0.0) + value
    return out


def pod_peer(workload: str, kind: str, service: str | None = None) -> PeerKey:
    attrs = {
        "podnet.peer.kind": "pod",
        "podnet.peer.namespace": NS,
        "podnet.peer.workload": workload,
        "podnet.peer.workload.kind": kind,
    }
    if service:
        attrs["podnet.peer.service"] = service
    return tuple(sorted(attrs.items()))


NODE_PEER: PeerKey = (("podnet.peer.kind", "node"),)


def served_by_remote(s: Scenario) -> dict[str, dict[str, int]]:
    """Each web replica's own log: one line per connection it served, with its remote
    address; the connections by remote address."""
    served: dict[str, dict[str, int]] = {}
    for w in (n for n in s.pods if n.startswith("web-")):
        served[w] = {}
        for x in s.node.kubectl("logs", "-n", NS, w).splitlines():
            if x.startswith("{"):
                remote = json.loads(x)["remote"]
                served[w][remote] = served[w].get(remote, 0) + 1
        assert sum(served[w].values()) == s.truth[w]["opened_in"]
    return served


def peer_figures(s: Scenario, pick: Any) -> dict[str, dict[PeerKey, float]]:
    """``pick(points)`` of each pod of the scenario's latest export."""
    out = {}
    for name, pod in s.pods.items():
        exports = pod_exports(s.collector, NS, pod["metadata"]["name"])
        out[name] = pick(exports[-1][1]) if exports else {}
    return out


def wait_peer_figures(s: Scenario, want: dict[str, dict[str, dict[PeerKey, float]]]) -> None:
    """Until, in each pod's latest export, the series named in ``want`` equal it."""
    picks = {
        "opened_out": ("podnet.peer.tcp.connections.opened", {"podnet_direction": "outbound"}),
        "opened_in": ("podnet.peer.tcp.connections.opened", {"podnet_direction": "inbound"}),
        "failed_refused": ("podnet.peer.tcp.connections.failed", {"error_type": "refused"}),
    }
    last: dict[str, Any] = {}

    def exact() -> bool:
        for name, metrics in want.items():
            exports = pod_exports(s.collector, NS, s.pods[name]["metadata"]["name"])
            points = exports[-1][1] if exports else {}
            last[name] = {
                k: {p: v for p, v in by_peer(points, picks[k][0], **picks[k][1]).items() if p in metrics[k]}
                for k in metrics
            }
            if last[name] != metrics:
                return False
        return True

    try:
        wait(exact, 90, "the peer figures")
    except AssertionError:
        full = {
            name: {k: by_peer(pod_exports(s.collector, NS, s.pods[name]["metadata"]["name"])[-1][1], m, **a)}
            for name, metrics in want.items()
            for k, (m, a) in picks.items()
            if k in metrics
        }
        raise AssertionError(f"peer figures: exported {last}\n != truth {want}\n(all of them: {full})") from None


def test_peers_through_the_service_exact(scenario: Scenario) -> None:
    """Issue 12 on the real node: who talked to whom through the web Service's ClusterIP
    (kube-proxy's DNAT in the node's namespace), each figure what the pods themselves did."""
    s = scenario
    for name, want in s.truth.items():
        if name != "hostnet":  # (hostnet's own figures: test_every_pod_figure_exact)
            wait_figures(s.collector, NS, s.pods[name]["metadata"]["name"], want)
    ip = {name: pod["status"]["podIP"] for name, pod in s.pods.items()}
    served = served_by_remote(s)
    REPORT["peers: web replicas' connections by remote address"] = served
    # kube-proxy (iptables, clusterCIDR set, no masqueradeAll) masquerades only sources outside
    # the cluster CIDR (and hairpins): the Job's and duo's connections reach the backends from
    # their own pod IPs, so their peer there is their workload, not the node.
    assert sum(srv.get(ip["client"], 0) for srv in served.values()) == s.truth["client"]["opened_out"] == N_JOB
    assert sum(srv.get(ip["duo"], 0) for srv in served.values()) == N_A + N_B
    client, duo = pod_peer("client", "job"), pod_peer("duo", "pod")
    want = {
        "client": {"opened_out": {pod_peer("web", "deployment", service="web"): s.truth["client"]["opened_out"]}},
        "refused": {"failed_refused": {NODE_PEER: s.truth["refused"]["refused"]}},
    }
    for w, srv in served.items():
        # (a peer with no connection to this replica has no series)
        inbound = {p: float(srv[a]) for p, a in ((client, ip["client"]), (duo, ip["duo"])) if srv.get(a)}
        want[w] = {"opened_in": inbound}
    wait_peer_figures(s, want)
    # ... and nothing else: the client's and the refused pod's only peers, and every web
    # replica's inbound connections summing over its peers to what it accepted.
    got = peer_figures(
        s,
        lambda p: {
            "out": by_peer(p, "podnet.peer.tcp.connections.opened", podnet_direction="outbound"),
            "in": by_peer(p, "podnet.peer.tcp.connections.opened", podnet_direction="inbound"),
            "failed": by_peer(p, "podnet.peer.tcp.connections.failed"),
        },
    )
    assert got["client"]["out"] == want["client"]["opened_out"] and not got["client"]["in"], got["client"]
    assert got["refused"]["failed"] == {(("error.type", "refused"), *NODE_PEER): N_REFUSED}, got["refused"]
    for w in served:
        assert sum(got[w]["in"].values()) == s.truth[w]["opened_in"], (w, got[w]["in"], served[w])
        assert not got[w]["out"], got[w]
    # Every export of every pod of the scenario: its bytes by peer sum to its bytes, per
    # direction (podnet.network.io over its transports), in the same export.
    checked = 0
    for name, pod in s.pods.items():
        exports = pod_exports(s.collector, NS, pod["metadata"]["name"])
        assert exports, name
        for _, points in exports:
            for d in ("receive", "transmit"):
                peers = by_peer(points, "podnet.peer.network.io", network_io_direction=d)
                total = by_peer(points, "podnet.network.io", network_io_direction=d)
                assert sum(peers.values()) == sum(total.values()), (name, d, peers, total)
                checked += 1
        if by_peer(exports[-1][1], "podnet.network.io"):
            assert by_peer(exports[-1][1], "podnet.peer.network.io"), f"{name}: no peer bytes"
    REPORT["peers: exports whose bytes by peer sum exactly (pod x direction)"] = checked


def test_masqueraded_peer_is_the_node(scenario: Scenario) -> None:
    """hostnet connects from the node's network (outside the cluster CIDR): kube-proxy
    masquerades it, and the backends see the node's address on the pods' bridge, which
    README "Peers" reports as ``podnet.peer.kind=node``."""
    s = scenario
    ip = {name: pod["status"]["podIP"] for name, pod in s.pods.items()}
    served = served_by_remote(s)
    masq = {w: sum(n for a, n in srv.items() if a not in (ip["client"], ip["duo"])) for w, srv in served.items()}
    assert {a for srv in served.values() for a in srv} - {ip["client"], ip["duo"]} == {GATEWAY}, served
    assert sum(masq.values()) == N_HOST
    wait_peer_figures(s, {w: {"opened_in": {NODE_PEER: float(n)} if n else {}} for w, n in masq.items()})


def test_resources_name_pods_and_workloads(scenario: Scenario) -> None:
    s = scenario
    for name, pod in s.pods.items():
        pname = pod["metadata"]["name"]
        res, _ = pod_exports(s.collector, NS, pname)[-1]
        assert res["k8s.pod.uid"] == pod["metadata"]["uid"]
        assert res["k8s.namespace.name"] == NS
        assert res["k8s.node.name"] == NODE_NAME
        owner = (pod["metadata"].get("ownerReferences") or [{}])[0]
        if name.startswith("web-"):
            assert res["k8s.replicaset.name"] == owner["name"]
            assert res["k8s.deployment.name"] == "web"
            assert res["service.name"] == "web"  # app.kubernetes.io/name
        elif name == "client":
            assert res["k8s.job.name"] == "client"
            assert res["service.name"] == "client"  # the workload's name
        else:
            assert "k8s.deployment.name" not in res and "k8s.job.name" not in res
            assert res["service.name"] == pname
    REPORT["agent pods exported"] = len(s.pods)


def test_kubelet_summary_of_the_agent(scenario: Scenario) -> None:
    """The agent pod's CPU and memory as the kubelet's summary API gives them (CPU and
    memory only, as metrics-server asks: the full summary answers 500 here, cAdvisor
    "cannot find filesystem info for device /dev/vda" for the root filesystem). A new
    pod's first sample can carry its CPU with a working set of 0 (seen once in CI, the
    next sample had 33 MiB): both are waited for."""
    s = scenario
    name = s.agent["metadata"]["name"]
    stats: dict[str, Any] = {}

    def has_stats() -> bool:
        for p in s.node.kubelet_get("/stats/summary?only_cpu_and_memory=true").get("pods", []):
            if (
                p["podRef"]["name"] == name
                and p.get("cpu", {}).get("usageNanoCores") is not None
                and p.get("memory", {}).get("workingSetBytes")
            ):
                stats.update(p)
                return True
        return False

    s.node.wait(has_stats, 120, "the kubelet's CPU and memory working set of the agent pod")
    assert stats["podRef"]["namespace"] == AGENT_NS
    memory = stats["memory"]["workingSetBytes"]
    REPORT["agent pod CPU (kubelet summary, millicores)"] = round(stats["cpu"]["usageNanoCores"] / 1e6, 1)
    REPORT["agent pod memory working set (kubelet summary, MiB)"] = round(memory / 2**20, 1)


def test_deleted_pod_leaves_the_export(scenario: Scenario) -> None:
    """After its final report (exact), a deleted pod is in no later request."""
    s = scenario
    wait_figures(s.collector, NS, "duo", s.truth["duo"])
    s.node.kubectl("delete", "pod", "-n", NS, "duo", "--wait=true", "--timeout=120s")
    deleted_at = len(otlp_json.requests(s.collector.file))

    def gone() -> bool:
        later = otlp_json.requests(s.collector.file)[deleted_at:]
        absent = [all(r.get("k8s.pod.name") != "duo" for r, _ in otlp_json.by_pod(req)) for req in later]
        return len(absent) >= 3 and all(absent[-3:])

    wait(gone, 60, "duo to leave the export")
    exports = pod_exports(s.collector, NS, "duo")
    assert {k: summary(exports[-1][1])[k] for k in s.truth["duo"]} == s.truth["duo"]
    later = otlp_json.requests(s.collector.file)[deleted_at:]
    seen = [any(r.get("k8s.pod.name") == "duo" for r, _ in otlp_json.by_pod(req)) for req in later]
    assert seen == sorted(seen, reverse=True), "duo came back after it left"


def test_rolling_update_leaves_nothing_of_the_old_agent(scenario: Scenario) -> None:
    s = scenario
    old_uid = s.agent["metadata"]["uid"]
    old_progs, old_links = bpf_ids(s.agent_pid)
    web = next(n for n in s.pods if n.startswith("web-"))
    (old_start,) = start_times(s.collector, NS, web)
    helm(
        s.node,
        "upgrade",
        "otel-podnet",
        str(REPO / "deploy" / "helm" / "otel-podnet"),
        "-n",
        AGENT_NS,
        "--reuse-values",
        "--set",
        f"image.tag={AGENT_TAG_NEXT}",
    )
    new = agent_pod(s.node, not_uid=old_uid)
    # (The status may name the image by its other tag: both tags are the same image.)
    assert new["spec"]["containers"][0]["image"] == f"{AGENT_REPOSITORY}:{AGENT_TAG_NEXT}"
    wait(
        lambda: not (old_progs & bpftool_ids("prog")) and not (old_links & bpftool_ids("link")),
        60,
        "the old agent's programs and links to go",
    )
    (new_pid,) = pod_pids(s.node, new)
    new_progs, _ = bpf_ids(new_pid)
    assert new_progs and not new_progs & old_progs
    # The new agent counts on: a new client's figures exact, under a new start time.
    apply(s.node, job("client2", s.cluster_ip, N_JOB))
    pod = job_pod(s.node, "client2")
    for pid in pod_pids(s.node, pod):
        go(pid)
    report = wait_report(s.node, NS, pod["metadata"]["name"], "connected", N_JOB)
    for pid in pod_pids(s.node, pod):
        go(pid, "done")
    wait_figures(
        s.collector,
        NS,
        pod["metadata"]["name"],
        {"opened_out": N_JOB, "payload_tx": report["sent"], "payload_rx": report["received"]},
    )
    # Backends see the restart: the web pod's counters under a new start time.
    (new_start,) = start_times(s.collector, NS, web)
    assert new_start > old_start
    helm(s.node, "uninstall", "otel-podnet", "-n", AGENT_NS, "--wait")


def test_kubectl_apply_of_the_manifest(scenario: Scenario) -> None:
    """README "Deploy", the plain manifest: its image, OTLP endpoint and cgroup v2 path
    replaced (as sed would), applied; Ready with the same capabilities, and exporting."""
    s = scenario
    # helm uninstall --wait returns before the DaemonSet's pod has terminated
    wait(lambda: not s.node.kubectl_json("get", "pods", "-n", AGENT_NS)["items"], 120, "the Helm release's pod to go")
    text = (REPO / "deploy" / "otel-podnet.yaml").read_text()
    for old, new in (
        ("ghcr.io/otel-podnet/otel-podnet:0.1.0", f"{AGENT_REPOSITORY}:{AGENT_TAG}"),
        ("http://otel-podnet-gateway.otel-podnet.svc:4317", s.collector.endpoint),
        ("path: /sys/fs/cgroup\n", f"path: {s.node.cgroup2}\n"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    web = next(n for n in s.pods if n.startswith("web-"))
    (before,) = start_times(s.collector, NS, web)
    s.node.kubectl("apply", "-f", "-", input_text=text)
    progs: set[int] = set()
    try:
        rollout_status(s.node)
        pod = agent_pod(s.node)
        (pid,) = pod_pids(s.node, pod)
        assert caps(pid, "CapBnd") == set(CAPS.values())
        assert caps(pid, "CapEff") == set(CAPS.values())
        (ctr,) = pod["spec"]["containers"]
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        assert ctr["securityContext"].get("privileged") is False
        # Its first exports carry the web pods again, under its own start time.
        try:
            wait(lambda: start_times(s.collector, NS, web) not in (set(), {before}), 120, "its exports")
        except AssertionError:
            logs = s.node.kubectl("logs", "-n", AGENT_NS, pod["metadata"]["name"], check=False)
            raise AssertionError(f"no export from the manifest's agent ({before}):\n{logs}") from None
        progs, _ = bpf_ids(pid)
    finally:
        s.node.kubectl("delete", "-f", "-", "--wait=true", "--timeout=120s", input_text=text, check=False)
    wait(lambda: not (progs & bpftool_ids("prog")), 60, "its programs to go")
