"""Peer metrics (issue 12) without a kernel: naming addresses, --peer-cidr, the top-N fold,
and the peer rows read into deltas (a stand-in for the datapath's two arrays)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from otel_podnet.inventory import PodInfo
from otel_podnet.peerinfo import PeerWorkload, ServiceRef, StaticPeerDirectory, directory_from_text, workload_of
from otel_podnet.peers import (
    EXTERNAL,
    NODE_PEER,
    OTHER,
    Peer,
    PeerFolder,
    PeerResolver,
    PeerTable,
    default_gateways,
    node_addresses,
    parse_peer_cidr,
)
from otel_podnet.settings import ConfigError, parse_max_peers, parse_peer_cidrs


def v(tx: int = 0, rx: int = 0, out: int = 0, inb: int = 0, refused: int = 0) -> tuple[int, ...]:
    return (tx, rx, out, inb, refused, 0, 0, 0, 0)


def pod(name: str, ip: str, workload: dict[str, str] | None = None, **kw: object) -> PodInfo:
    return PodInfo(uid=name, name=name, namespace="shop", ips=(ip,), workload=workload or {}, **kw)  # type: ignore[arg-type]


# -- --peer-cidr and --max-peers ------------------------------------------------------------------


def test_peer_cidr_parsing() -> None:
    assert parse_peer_cidr("corp=10.0.0.0/8", "--peer-cidr") == ("corp", ipaddress.ip_network("10.0.0.0/8"))
    assert parse_peer_cidr(" v6-lab = 2001:db8::/32 ", "x")[1] == ipaddress.ip_network("2001:db8::/32")
    for bad in ("corp", "=10.0.0.0/8", "corp=", "corp=10.0.0.1/8", "corp=10.0.0.0/33", "a b=10.0.0.0/8"):
        with pytest.raises(ValueError, match=r"^--peer-cidr '.*': expected NAME=CIDR"):
            parse_peer_cidr(bad, "--peer-cidr")


def test_peer_cidrs_from_option_env_default() -> None:
    env = {"PODNET_PEER_CIDRS": "a=10.0.0.0/8, b=192.168.0.0/16"}
    assert [n for n, _ in parse_peer_cidrs(None, env)] == ["a", "b"]
    assert [n for n, _ in parse_peer_cidrs(["c=172.16.0.0/12"], env)] == ["c"]  # the option wins
    assert parse_peer_cidrs(None, {}) == ()
    with pytest.raises(ConfigError, match=r"^PODNET_PEER_CIDRS 'b=192.168.0.1/16': expected NAME=CIDR"):
        parse_peer_cidrs(None, {"PODNET_PEER_CIDRS": "a=10.0.0.0/8,b=192.168.0.1/16"})


def test_max_peers() -> None:
    assert parse_max_peers(None, {}) == 20
    assert parse_max_peers(None, {"PODNET_MAX_PEERS": "0"}) == 0
    assert parse_max_peers("5", {"PODNET_MAX_PEERS": "0"}) == 5
    with pytest.raises(ConfigError, match=r"^--max-peers '-1': expected the number of peers"):
        parse_max_peers("-1", {})


# -- naming addresses --------------------------------------------------------------------------


def test_workloads_from_owners() -> None:
    assert workload_of(pod("web-1", "10.0.0.1", {"k8s.deployment.name": "web", "k8s.replicaset.name": "web-5d"})) == (
        PeerWorkload("shop", "web", "deployment")
    )
    assert workload_of(pod("job-1", "10.0.0.2", {"k8s.cronjob.name": "nightly", "k8s.job.name": "nightly-1"})).kind == (
        "cronjob"
    )
    assert workload_of(pod("rs-1", "10.0.0.3", {"k8s.replicaset.name": "rs"})) == PeerWorkload("shop", "rs-1", "pod")


def test_resolver_order_and_services() -> None:
    web = PeerWorkload("shop", "web", "deployment")
    d = StaticPeerDirectory(
        [
            pod("web-1", "10.0.0.1", {"k8s.deployment.name": "web"}),
            pod("agent", "192.168.1.5", host_network=True),
            pod("old", "10.0.0.9", phase="Succeeded"),
        ],
        {
            "10.96.0.1": ServiceRef("shop", "web", (web,)),
            "10.96.0.2": ServiceRef("shop", "mixed", (web, PeerWorkload("shop", "api", "deployment"))),
        },
    )
    r = PeerResolver(d, {"192.168.1.4", *d.node_ips()}, [("corp", ipaddress.ip_network("172.16.0.0/12")),
                                                        ("lab", ipaddress.ip_network("172.16.5.0/24"))])  # fmt: skip
    assert r.resolve("10.0.0.1") == Peer("pod", "shop", "web", "deployment")
    assert r.resolve("10.96.0.1") == Peer("pod", "shop", "web", "deployment", service="web")
    assert r.resolve("10.96.0.2") == Peer("pod", "shop", service="mixed")
    assert r.resolve("192.168.1.5") == r.resolve("192.168.1.4") == NODE_PEER
    assert r.resolve("172.16.5.9") == Peer("external", workload="lab")  # the most specific group
    assert r.resolve("172.17.0.1") == Peer("external", workload="corp")
    assert r.resolve("10.0.0.9") == r.resolve("8.8.8.8") == r.resolve("2001:db8::1") == EXTERNAL
    assert Peer("pod", "shop", "web", "deployment", "web").attributes() == (
        ("podnet.peer.kind", "pod"),
        ("podnet.peer.namespace", "shop"),
        ("podnet.peer.workload", "web"),
        ("podnet.peer.workload.kind", "deployment"),
        ("podnet.peer.service", "web"),
    )


def test_node_addresses_of_an_agent_in_a_pod(tmp_path: Path) -> None:
    """On the host the agent's addresses are the node's; in its pod's network namespace its
    address is its pod's, and the node is its default gateway (the bridge's address, the
    source of what the node masquerades to pods)."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net/route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100E70A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0000E70A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_gateways(tmp_path) == {"10.231.0.1"}
    assert default_gateways(tmp_path / "none") == frozenset()
    d = StaticPeerDirectory([pod("agent-x", "10.231.0.7"), pod("hostnet", "10.233.0.1", host_network=True)], {})
    assert node_addresses({"10.231.0.7"}, {"10.231.0.1"}, d) == {"10.231.0.1"}
    assert node_addresses({"192.0.2.2", "10.231.0.1"}, {"192.0.2.1"}, d) == {"192.0.2.2", "10.231.0.1"}
    assert node_addresses({"10.231.0.7"}, {"10.231.0.1"}, None) == {"10.231.0.7"}


def test_directory_of_a_pods_file_with_services() -> None:
    text = """
apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: db-0, namespace: shop, uid: u1, labels: {app: db},
             ownerReferences: [{kind: StatefulSet, name: db, controller: true}]}
  spec: {nodeName: other-node}
  status: {phase: Running, podIP: 10.0.1.7}
- kind: Service
  metadata: {name: db, namespace: shop}
  spec: {clusterIP: 10.96.0.7, clusterIPs: [10.96.0.7], selector: {app: db}}
- kind: Service
  metadata: {name: headless, namespace: shop}
  spec: {clusterIP: None, selector: {app: db}}
"""
    from otel_podnet.inventory import parse_pod_list

    d = directory_from_text(text, parse_pod_list(text, "pods.yaml"))
    assert d.pod_by_ip("10.0.1.7") == PeerWorkload("shop", "db", "statefulset")  # another node's pod too
    assert d.service_by_ip("10.96.0.7") == ServiceRef("shop", "db", (PeerWorkload("shop", "db", "statefulset"),))


# -- at most N series per owner ---------------------------------------------------------------------


A, B, C, D = (Peer("pod", "shop", n, "deployment") for n in "abcd")


def total(series: dict[Peer, tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(map(sum, zip(*series.values(), strict=True)))


def test_fold_keeps_the_busiest_and_sums_the_rest_exactly() -> None:
    f = PeerFolder(2)
    s = f.fold("p", {A: v(100, 10, out=1), B: v(50), C: v(20, refused=3), D: v(5)})
    assert s == {A: v(100, 10, out=1), B: v(50), OTHER: v(25, refused=3)}
    # fewer peers than the cap: no other at all
    assert PeerFolder(4).fold("p", {A: v(1), B: v(2)}) == {A: v(1), B: v(2)}


def test_fold_is_monotonic_and_exact_when_the_busiest_change() -> None:
    f = PeerFolder(2)
    seen: dict[Peer, tuple[int, ...]] = {}
    truth = v()
    rounds = [
        {A: v(100), B: v(50), C: v(10)},
        {C: v(500), A: v(1)},  # C overtakes B: B's whole series goes to other
        {},  # quiet: the series stay as they are
        {B: v(900)},  # B back: a new series from this interval on
    ]
    for deltas in rounds:
        truth = tuple(map(sum, zip(truth, *deltas.values(), strict=True))) if deltas else truth
        s = f.fold("p", deltas)
        assert total(s) == truth  # every export sums to the owner's totals
        assert len(s) <= 3  # two peers and other
        for p, val in s.items():
            if p in seen and p == OTHER:
                assert val >= seen[p]  # other only grows
        seen = s
    assert seen == {C: v(500), B: v(900), OTHER: v(100 + 1 + 50 + 10)}


def test_exported_in_peer_order_as_the_series_change() -> None:
    f = PeerFolder(2)

    def exp(deltas: dict[Peer, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
        return [(dict(attrs)["podnet.peer.kind"] + dict(attrs).get("podnet.peer.workload", ""), val)
                for attrs, val in f.exported("p", deltas)]  # fmt: skip

    assert exp({B: v(5), A: v(3)}) == [("poda", v(3)), ("podb", v(5))]
    kept = f.exported("p", {})
    assert f.exported("p", {}) is kept  # no growth: the very same tuple
    assert exp({A: v(1)}) == [("poda", v(4)), ("podb", v(5))]  # same series: the order kept
    assert exp({C: v(100)}) == [("other", v(4)), ("podb", v(5)), ("podc", v(100))]  # A drops out
    # fold() changes the set of series behind exported(): exported must not reuse its order
    f.fold("p", {D: v(1000)})
    assert exp({D: v(1)}) == [("other", v(9)), ("podc", v(100)), ("podd", v(1001))]
    assert exp({OTHER: v(1), C: v(1)}) == [("other", v(10)), ("podc", v(101)), ("podd", v(1001))]


def test_max_one_and_the_overflow_row() -> None:
    f = PeerFolder(1)
    assert f.fold("p", {OTHER: v(7), A: v(3)}) == {A: v(3), OTHER: v(7)}
    f.forget("p")
    assert f.owners() == []


# -- the kernel's rows into deltas --------------------------------------------------------------------


class Rows:
    """The datapath's peer arrays as plain lists: slots 0-3, rows 4-7."""

    peer_rows = 8

    def __init__(self) -> None:
        self.owner: list[tuple[int, int, str] | None] = [None] * 4 + [(0, 0, "::")] * 4
        self.values: list[tuple[int, ...]] = [v()] * 8
        self.free: list[int] = []
        self.index: dict[tuple[int, str], int] = {}

    def push_free_peer_row(self, row: int) -> None:
        self.free.append(row)

    def read_peer_rows(self) -> tuple[list[tuple[int, int, str] | None], list[tuple[int, ...]]]:
        return list(self.owner), list(self.values)

    def free_peer_row(self, row: int, slot: int, address: str) -> None:
        self.index.pop((slot, address), None)

    def recycle_peer_row(self, row: int) -> None:
        self.values[row] = v()
        if row >= 4:
            self.owner[row] = (0, 0, "::")
            self.free.append(row)

    def take(self, slot: int, address: str) -> int:  # what the kernel does
        row = self.free.pop(0)
        self.owner[row] = (slot, 1, address)
        self.index[(slot, address)] = row
        return row


def test_rows_become_deltas_per_owner_and_idle_rows_are_freed() -> None:
    rows = Rows()
    t = PeerTable(rows, slots=4, idle_rounds=2)
    t.start()
    assert rows.free == [4, 5, 6, 7]
    r = PeerResolver(None, {"10.0.0.1"})
    a = rows.take(2, "10.0.0.1")
    rows.values[a] = v(100, 50, out=1)
    rows.values[2] = v(7)  # slot 2's overflow row
    owners = {2: "pod-a"}
    deltas, freed = t.read(owners, r)
    assert deltas == {"pod-a": {NODE_PEER: v(100, 50, out=1), OTHER: v(7)}} and not freed
    rows.values[a] = v(130, 50, out=1)
    assert t.read(owners, r)[0] == {"pod-a": {NODE_PEER: v(30)}}
    assert t.read(owners, r) == ({}, False)  # idle once
    assert t.read(owners, r) == ({}, True)  # idle twice: out of the index
    assert (2, "10.0.0.1") not in rows.index
    rows.values[a] = v(131, 50, out=1)  # a last packet before its socket moved on
    assert t.read(owners, r)[0] == {"pod-a": {NODE_PEER: v(1)}}
    assert a in rows.free and rows.values[a] == v()


def test_a_retired_slot_is_carried_into_its_owner() -> None:
    rows = Rows()
    t = PeerTable(rows, slots=4)
    t.start()
    r = PeerResolver(None)
    a = rows.take(3, "8.8.8.8")
    rows.values[a] = v(10)
    assert t.read({3: "gone"}, r)[0] == {"gone": {EXTERNAL: v(10)}}
    rows.values[a] = v(15)
    rows.values[3] = v(2)
    t.slot_retired(3, "gone")
    deltas, _ = t.read({}, r)  # the slot has no owner any more: the retirement said whose
    assert deltas == {"gone": {EXTERNAL: v(5), OTHER: v(2)}}
    assert rows.values[a] == rows.values[3] == v() and a in rows.free


# -- what the exporters make of a sample's peers ------------------------------------------------------


def test_peer_series_and_console_lines() -> None:
    import io

    from otel_podnet.exporters.console import ConsoleExporter
    from otel_podnet.samples import Counters, Health, PodSample, Snapshot
    from otel_podnet.series import PEER_FAILED, PEER_IO, PEER_OPENED, peer_series

    db = Peer("pod", "shop", "db", "statefulset", "db").attributes()
    sample = PodSample("u1", Counters(), peers=((db, v(900, 300, out=2, refused=1)), (OTHER.attributes(), v(7))))
    got = {(d.name, a): x for d, a, x in peer_series(sample.peers)}
    assert got == {
        (PEER_IO.name, (("network.io.direction", "transmit"), *db)): 900,
        (PEER_IO.name, (("network.io.direction", "receive"), *db)): 300,
        (PEER_OPENED.name, (("podnet.direction", "outbound"), *db)): 2,
        (PEER_FAILED.name, (("error.type", "refused"), *db)): 1,
        (PEER_IO.name, (("network.io.direction", "transmit"), ("podnet.peer.kind", "other"))): 7,
    }  # no zero points
    out = io.StringIO()
    ConsoleExporter(out).export(Snapshot((sample,), Health(1, 1, 1, 1, 1, 0, 0, 0)), {})
    lines = out.getvalue().splitlines()
    assert lines[2].split() == "-> pod shop/db (statefulset) via service db tx 900 rx 300 open 2/0 failed 1".split()
    assert lines[3].split() == "-> other tx 7 rx 0 open 0/0 failed 0".split()
