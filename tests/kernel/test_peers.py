"""Peer metrics (issue 12) on a simulated node, against the interfaces' own counters.

Three workloads (a Deployment of two pods, a StatefulSet, a DaemonSet), a hostNetwork pod
that makes the node's address known, a namespace standing in for a host outside the
cluster (203.0.113.10, routed through the node's namespace) and a Service whose ClusterIP
(198.51.100.10) the node's namespace translates to the StatefulSet's pod with iptables, as
kube-proxy does. Transfers run one after the other; each one's bytes are the client pod's
interface counters over it, less the Ethernet headers. Two agents count the same traffic:
one with the default cap and a --peer-cidr group, one with --max-peers 2.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_podnet.core import Core
from otel_podnet.inventory import PodsFileSource
from otel_podnet.peers import parse_peer_cidr
from otel_podnet.series import health_series
from otel_podnet.simnode import SimNode, SimPod, sh

ETH_HLEN = 14
EXT_IP, EXT_GW = "203.0.113.10", "203.0.113.1"
CLUSTER_IP = "198.51.100.10"

Attrs = tuple[tuple[str, str], ...]


def ip_bytes(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    d = {k: after[k] - before[k] for k in after}
    return d["tx_bytes"] - ETH_HLEN * d["tx_packets"], d["rx_bytes"] - ETH_HLEN * d["rx_packets"]


def quiet(node: SimNode, pod: SimPod) -> dict[str, int]:
    last = pod.iface_counters(node)
    while True:
        time.sleep(0.3)
        now = pod.iface_counters(node)
        if now == last:
            return now
        last = now


def peers_of(core: Core, uid: str) -> dict[Attrs, tuple[int, ...]]:
    for s in core.collect().samples:
        if s.uid == uid:
            return dict(s.peers)
    return {}


def pod_attrs(workload: str, kind: str, service: str = "") -> Attrs:
    a: Attrs = (
        ("podnet.peer.kind", "pod"),
        ("podnet.peer.namespace", "default"),
        ("podnet.peer.workload", workload),
        ("podnet.peer.workload.kind", kind),
    )
    return a + ((("podnet.peer.service", service),) if service else ())


NODE: Attrs = (("podnet.peer.kind", "node"),)
EXTERNAL: Attrs = (("podnet.peer.kind", "external"),)
PARTNERS: Attrs = (("podnet.peer.kind", "external"), ("podnet.peer.workload", "partners"))
OTHER: Attrs = (("podnet.peer.kind", "other"),)


def owner_refs(pod: SimPod) -> list[dict[str, Any]]:
    kinds = {"web": ("ReplicaSet", "web-5d8f9c"), "db": ("StatefulSet", "db"), "cache": ("DaemonSet", "cache")}
    kind, name = kinds.get(pod.labels.get("app", ""), ("", ""))
    return [{"kind": kind, "name": name, "controller": True, "apiVersion": "apps/v1", "uid": "x"}] if kind else []


def write_pods(node: SimNode, path: Path) -> None:
    items = node.pod_list()["items"]
    for item, pod in zip(items, node.pods, strict=True):
        item["metadata"]["ownerReferences"] = owner_refs(pod)
    items.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP], "selector": {"app": "db"}},
        }
    )
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))


class Outside:
    """A namespace joined to the node's by a veth: a host outside the cluster, and the
    routes and Service translation of a node (forwarding, a default route in each pod)."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.ns = f"pn{node.tag}-ext"
        self.rules: list[list[str]] = []
        sh("ip", "netns", "add", self.ns)
        node._netns.append(self.ns)  # removed with the node, also on failure
        nns = node.node_ns
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "-n", nns, "link", "add", f"x{node.tag}", "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "netns", "exec", nns, "sysctl", "-qw", f"net.ipv6.conf.x{node.tag}.disable_ipv6=1")
        sh("ip", "-n", nns, "link", "set", f"x{node.tag}", "multicast", "off", "up")
        sh("ip", "-n", nns, "addr", "add", f"{EXT_GW}/24", "dev", f"x{node.tag}")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "multicast", "off", "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{EXT_IP}/24", "dev", "eth0")
        sh("ip", "-n", self.ns, "route", "add", "default", "via", EXT_GW)
        macs = {ns: json_mac(ns, dev) for ns, dev in ((nns, f"x{node.tag}"), (self.ns, "eth0"))}
        sh(
            "ip",
            "-n",
            nns,
            "neigh",
            "replace",
            EXT_IP,
            "lladdr",
            macs[self.ns],
            "dev",
            f"x{node.tag}",
            "nud",
            "permanent",
        )
        sh("ip", "-n", self.ns, "neigh", "replace", EXT_GW, "lladdr", macs[nns], "dev", "eth0", "nud", "permanent")
        sh("ip", "netns", "exec", nns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for pod in node.pods:
            if not pod.host_network:
                sh("ip", "-n", pod.netns, "route", "add", "default", "via", node.node_ip4)

    def service(self, backend: SimPod, port: int) -> None:
        """ClusterIP:port -> backend:port in the node's namespace, masqueraded so the reply
        comes back through the node (kube-proxy's hairpin without br_netfilter)."""
        nat = ["ip", "netns", "exec", self.node.node_ns, "iptables", "-t", "nat", "-A"]
        sh(*nat, "PREROUTING", "-d", CLUSTER_IP, "-p", "tcp", "--dport", str(port), "-j", "DNAT",
           "--to-destination", f"{backend.ip4}:{port}")  # fmt: skip
        sh(*nat, "POSTROUTING", "-d", backend.ip4, "-p", "tcp", "--dport", str(port), "-j", "MASQUERADE")


def json_mac(ns: str, dev: str) -> str:
    import json

    return str(json.loads(sh("ip", "-j", "-n", ns, "link", "show", dev))[0]["address"])


@pytest.fixture
def cores(node: SimNode, tmp_path: Path, cgroup_root: Path) -> Iterator[list[Core]]:
    started: list[Core] = []
    try:
        yield started
    finally:
        for c in started:
            c.close()


def transfer(node: SimNode, client: SimPod, server: SimPod | None, addr: str, port: int, n: int, size: int,
             where: str | None = None) -> tuple[int, int]:  # fmt: skip
    """n connections of ``size`` bytes from client to a server at addr (in ``server``, the
    node's namespace when None, or the namespace ``where``); the client's IP bytes."""
    before = quiet(node, client)
    if where is not None:
        srv = node._spawn_in(where, node.outside_cgroup, [*workload_argv("tcp-server"), "--addr", addr,
                             "--port", str(port), "--count", str(n), "--recv", str(size)])  # fmt: skip
    else:
        srv = node.workload(server, "tcp-server", addr=addr, port=port, count=n, recv=size)
    node.wait_ready(srv)
    target = CLUSTER_IP if addr == "0.0.0.0" else addr
    got = node.result(node.workload(client, "tcp-client", addr=target, port=port, count=n, send=size))
    assert got["connected"] == n
    node.result(srv)
    return ip_bytes(before, quiet(node, client))


def workload_argv(mode: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "otel_podnet.simnode.workload", mode]


@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables not installed (Makefile APT_PACKAGES)")
def test_peer_series_exact_on_a_simulated_node(node: SimNode, tmp_path: Path, cgroup_root: Path,
                                               cores: list[Core]) -> None:  # fmt: skip
    web = node.add_pod("web-5d8f9c-abcde", labels={"app": "web", "pod-template-hash": "5d8f9c"})
    web2 = node.add_pod("web-5d8f9c-fghij", labels={"app": "web", "pod-template-hash": "5d8f9c"})
    db = node.add_pod("db-0", labels={"app": "db"})
    cache = node.add_pod("cache-x2x9z", labels={"app": "cache"})
    node.add_pod("agent-q7k", host_network=True, labels={})  # its IP: the node's
    out = Outside(node)
    node.static_neighbors()
    for p in (web, web2, db, cache):
        node.set_offloads(p, on=False)  # one frame, one IP packet: the interface counts what we count
    out.service(db, 8080)
    pods_file = tmp_path / "pods.yaml"
    write_pods(node, pods_file)

    wide = Core(cgroup_root, PodsFileSource(pods_file, node.name), node_ips=(),
                peer_cidrs=[parse_peer_cidr(f"partners={EXT_GW[:-1]}0/24", "--peer-cidr")])  # fmt: skip
    wide.start()
    cores.append(wide)
    capped = Core(cgroup_root, PodsFileSource(pods_file, node.name), node_ips=(), max_peers=2)
    capped.start()
    cores.append(capped)

    # web -> db 400 kB, -> cache 300 kB, -> the node 200 kB, -> outside 100 kB, -> db's
    # Service 50 kB, and web2 -> db; then two refused attempts from web to db
    to_db = transfer(node, web, db, db.ip4, 7001, 4, 100_000)
    to_cache = transfer(node, web, cache, cache.ip4, 7002, 3, 100_000)
    to_node = transfer(node, web, None, node.node_ip4, 7003, 2, 100_000)
    to_ext = transfer(node, web, None, EXT_IP, 7004, 1, 100_000, where=out.ns)
    to_svc = transfer(node, web, db, "0.0.0.0", 8080, 1, 50_000)
    web2_db = transfer(node, web2, db, db.ip4, 7005, 1, 10_000)
    # and 200 UDP datagrams to cache: an unconnected socket, its peer looked up per packet
    before = quiet(node, web)
    rcv = node.workload(cache, "udp-recv", addr=cache.ip4, port=7006, count=200)
    node.wait_ready(rcv)
    node.result(node.workload(web, "udp-send", addr=cache.ip4, port=7006, count=200, size=100))
    assert node.result(rcv) == {"received": 200, "bytes": 20_000}
    udp = ip_bytes(before, quiet(node, web))
    assert udp == (200 * 128, 0)  # 100 bytes + 8 UDP + 20 IPv4 each
    before = quiet(node, web)
    fail = node.result(node.workload(web, "connect-fail", addr=db.ip4, port=7999, count=2))
    assert fail == {"ECONNREFUSED": 2}
    refused = ip_bytes(before, quiet(node, web))  # two SYNs out, two RSTs back

    def expect(b: tuple[int, int], out: int = 0, inb: int = 0, refused: int = 0) -> tuple[int, ...]:
        return (b[0], b[1], out, inb, refused, 0, 0, 0, 0)

    want_web = {
        pod_attrs("db", "statefulset"): expect((to_db[0] + refused[0], to_db[1] + refused[1]), out=4, refused=2),
        pod_attrs("cache", "daemonset"): expect((to_cache[0] + udp[0], to_cache[1]), out=3),
        NODE: expect(to_node, out=2),
        PARTNERS: expect(to_ext, out=1),
        pod_attrs("db", "statefulset", service="db"): expect(to_svc, out=1),
    }
    deadline = time.monotonic() + 10
    got = peers_of(wide, web.uid)
    while time.monotonic() < deadline and set(got) != set(want_web):
        time.sleep(0.2)
        got = peers_of(wide, web.uid)
    assert refused == (2 * 60, 2 * 40)  # a SYN with its options, a bare RST
    assert got == want_web

    # summed over peers, the pod's own totals
    def totals(core: Core, pod: SimPod) -> tuple[int, int, int, int]:
        for s in core.collect().samples:
            if s.uid == pod.uid:
                c = s.counters
                return c.bytes_tx_tcp + c.bytes_tx_udp, c.bytes_rx_tcp + c.bytes_rx_udp, c.opened_out, c.opened_in
        raise AssertionError(pod.name)

    def summed(peers: dict[Attrs, tuple[int, ...]]) -> tuple[int, int, int, int]:
        return (
            sum(v[0] for v in peers.values()),
            sum(v[1] for v in peers.values()),
            sum(v[2] for v in peers.values()),
            sum(v[3] for v in peers.values()),
        )

    for core in (wide, capped):
        for pod in (web, web2, db, cache):
            assert summed(peers_of(core, pod.uid)) == totals(core, pod), pod.name

    # db: web inbound (4 connections and the RSTs it answered the refused SYNs with: the
    # SYNs reached no socket of db's, so db counts them nowhere), web2 inbound, and the
    # Service's connection from the node's address (the node's namespace masqueraded it)
    db_peers = peers_of(wide, db.uid)
    assert db_peers[pod_attrs("web", "deployment")][2:4] == (0, 5)
    assert db_peers[pod_attrs("web", "deployment")][:2] == (
        to_db[1] + web2_db[1] + refused[1],
        to_db[0] + web2_db[0],
    )
    assert db_peers[NODE][2:4] == (0, 1)
    assert set(db_peers) == {pod_attrs("web", "deployment"), NODE}

    # capped at 2: web's two busiest peers by bytes keep their series, the rest is other
    capped_web = peers_of(capped, web.uid)
    assert set(capped_web) == {pod_attrs("db", "statefulset"), pod_attrs("cache", "daemonset"), OTHER}
    rest = [want_web[k] for k in (NODE, PARTNERS, pod_attrs("db", "statefulset", service="db"))]
    assert capped_web[OTHER] == tuple(map(sum, zip(*rest, strict=True)))
    assert capped_web[pod_attrs("db", "statefulset")] == want_web[pod_attrs("db", "statefulset")]
    # two peers or fewer: no other
    assert OTHER not in peers_of(capped, db.uid)
    assert set(peers_of(capped, web2.uid)) == {pod_attrs("db", "statefulset")}


def xlated_bytes(prog_fd: int) -> int:
    """The size of a loaded program as the verifier left it (after dead-code removal)."""
    import json

    info = Path(f"/proc/self/fdinfo/{prog_fd}").read_text()
    prog_id = next(ln.split()[1] for ln in info.splitlines() if ln.startswith("prog_id:"))
    return int(json.loads(sh("bpftool", "-j", "prog", "show", "id", prog_id))["bytes_xlated"])


def test_max_peers_0_leaves_no_peer_code_and_no_series(node: SimNode, tmp_path: Path, cgroup_root: Path,
                                                        cores: list[Core]) -> None:  # fmt: skip
    a, b = node.add_pod("a"), node.add_pod("b")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    off = Core(cgroup_root, PodsFileSource(pods_file, node.name), max_peers=0)
    off.start()
    cores.append(off)
    on = Core(cgroup_root, PodsFileSource(pods_file, node.name))
    on.start()
    cores.append(on)
    # podnet_peer_rows = 0 is a constant the verifier folds: the peer branches are removed
    for prog in ("podnet_egress", "podnet_ingress", "podnet_state"):
        assert xlated_bytes(off.datapath.prog_fd(prog)) < xlated_bytes(on.datapath.prog_fd(prog)), prog
    srv = node.workload(b, "tcp-server", addr=b.ip4, port=7300, count=2, recv=1000)
    node.wait_ready(srv)
    node.result(node.workload(a, "tcp-client", addr=b.ip4, port=7300, count=2, send=1000))
    node.result(srv)
    snap = off.collect()
    mine = [s for s in snap.samples if s.uid == a.uid]
    assert mine and mine[0].counters.opened_out == 2 and mine[0].peers == ()
    assert snap.health.peer_rows_capacity == 0
    assert not [a for d, a, _ in health_series(snap.health, 0) if ("podnet.map", "peers") in a]
    got = {dict(k)["podnet.peer.workload"]: v for k, v in peers_of(on, a.uid).items()}
    assert list(got) == ["b"] and got["b"][2] == 2


def test_a_removed_pods_rows_are_freed_and_its_final_figures_sum(node: SimNode, tmp_path: Path, cgroup_root: Path,
                                                                 cores: list[Core]) -> None:  # fmt: skip
    from otel_podnet import abi

    a, b = node.add_pod("a"), node.add_pod("b")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    core = Core(cgroup_root, PodsFileSource(pods_file, node.name))
    core.start()
    cores.append(core)
    srv = node.workload(b, "tcp-server", addr=b.ip4, port=7400, count=3, recv=5000)
    node.wait_ready(srv)
    node.result(node.workload(a, "tcp-client", addr=b.ip4, port=7400, count=3, send=5000))
    node.result(srv)
    core.collect()
    slots = {s for s, owner in core.attributor.slot_owners.items() if owner == a.uid}
    rows = {int(k.slot) for k, _ in core.datapath.peer_idx.items(abi.PodnetPeerKey, abi.PodnetPeerVal)}
    assert slots & rows  # a's traffic took a row of one of its slots
    node.remove_pod(a)
    node.write_pod_list(pods_file)
    final = None
    for _ in range(20):
        for s in core.collect().samples:
            if s.uid == a.uid and s.final:
                final = s
        if final is not None:
            break
        time.sleep(0.2)
    assert final is not None
    c = final.counters
    assert tuple(map(sum, zip(*(v for _, v in final.peers), strict=True)))[:4] == (
        c.bytes_tx_tcp + c.bytes_tx_udp,
        c.bytes_rx_tcp + c.bytes_rx_udp,
        c.opened_out,
        c.opened_in,
    )
    assert [dict(k).get("podnet.peer.workload") for k, _ in final.peers] == ["b"]
    left = {int(k.slot) for k, _ in core.datapath.peer_idx.items(abi.PodnetPeerKey, abi.PodnetPeerVal)}
    assert not slots & left  # its slots' rows went back to the kernel's queue
    core.collect()
    assert a.uid not in core.peer_folder.owners()


def test_a_full_peer_table_counts_in_other_and_in_map_full(node: SimNode, tmp_path: Path, cgroup_root: Path,
                                                           cores: list[Core]) -> None:  # fmt: skip
    from dataclasses import replace

    from otel_podnet.capacity import Capacity

    a, b, c = node.add_pod("a"), node.add_pod("b"), node.add_pod("c")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    # one allocatable row for the whole node: a's second peer finds none
    core = Core(cgroup_root, PodsFileSource(pods_file, node.name), capacity=replace(Capacity.for_pods(), peer_rows=1))
    core.start()
    cores.append(core)
    for port, server in ((7500, b), (7501, c)):
        srv = node.workload(server, "tcp-server", addr=server.ip4, port=port, count=2, recv=3000)
        node.wait_ready(srv)
        node.result(node.workload(a, "tcp-client", addr=server.ip4, port=port, count=2, send=3000))
        node.result(srv)
    time.sleep(0.5)
    snap = core.collect()
    s = next(s for s in snap.samples if s.uid == a.uid)
    peers = {dict(k).get("podnet.peer.workload", dict(k)["podnet.peer.kind"]): v for k, v in s.peers}
    # whichever socket came first took the row (b's: a talked to it first, unless another
    # agent's pod on this machine took the only row before); the rest is other, exactly
    assert set(peers) <= {"b", "other"} and "other" in peers
    assert tuple(map(sum, zip(*peers.values(), strict=True)))[:4] == (
        s.counters.bytes_tx_tcp + s.counters.bytes_tx_udp,
        s.counters.bytes_rx_tcp + s.counters.bytes_rx_udp,
        s.counters.opened_out,
        s.counters.opened_in,
    )
    assert peers["other"][2] >= 2  # at least c's two connections
    assert snap.health.peers_full > 0 and snap.health.peer_rows_capacity == 1
