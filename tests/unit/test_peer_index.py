"""The peer tables without an API server: pods, Services and EndpointSlices as kubectl and the
API write them (tests/unit/fixtures/kubectl-get-peers.json, from tests/e2e/peer_fixtures.py)
to IP → workload and ClusterIP → Service; watch events on them; IPs claimed twice."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from otel_podnet import kube
from otel_podnet.peer_index import (
    PeerTables,
    PodIndex,
    canonical_ip,
    cronjob_of_job,
    peer_workload,
    pod_peer,
    service_ips,
    slice_endpoints,
)
from otel_podnet.peerinfo import PeerWorkload, ServiceRef

FIXTURES = Path(__file__).parent / "fixtures"
NS = "peers"
KINDS = {"Pod": "pods", "Service": "services", "EndpointSlice": "endpointslices"}

Obj = dict[str, Any]


def W(workload: str, kind: str, ns: str = NS) -> PeerWorkload:
    return PeerWorkload(ns, workload, kind)


@pytest.fixture(scope="module")
def items() -> list[Obj]:
    doc = json.loads((FIXTURES / "kubectl-get-peers.json").read_text())
    assert doc["kind"] == "List"
    return list(doc["items"])


@pytest.fixture(scope="module")
def cluster_ips() -> dict[str, str]:
    return dict(json.loads((FIXTURES / "kubectl-get-peers.ips.json").read_text()))


def item(items: list[Obj], kind: str, name: str) -> Obj:
    [found] = [i for i in items if i["kind"] == kind and i["metadata"]["name"] == name]
    return copy.deepcopy(found)


def loaded(items: list[Obj]) -> PeerTables:
    """The tables as a directory's first lists leave them (each item as listed)."""
    tables = PeerTables()
    for kind in PeerTables.KINDS:
        index = tables.fresh(kind)
        for obj in items:
            if KINDS[obj["kind"]] == kind:
                index.apply("ADDED", obj)
        tables.install(kind, index)
    return tables


# -- what kubectl wrote ---------------------------------------------------------------------


def test_the_fixture_is_kubectls(items: list[Obj]) -> None:
    """The objects carry what the API adds (UIDs, resourceVersions, defaults), so the parsing
    is tested on what a watch delivers, not on hand-written dicts."""
    pods = [i for i in items if i["kind"] == "Pod"]
    assert len(pods) == 10
    assert all(p["metadata"]["uid"] and p["metadata"]["resourceVersion"] for p in pods)
    assert all(p["spec"]["dnsPolicy"] == "ClusterFirst" for p in pods)
    assert {i["apiVersion"] for i in items if i["kind"] == "EndpointSlice"} == {"discovery.k8s.io/v1"}


def test_lookups_exact(items: list[Obj], cluster_ips: dict[str, str]) -> None:
    t = loaded(items)
    assert t.sizes() == {"pods": 7, "services": 3, "endpointslices": 3}  # headless: no ClusterIP
    got = {
        ip: t.pod_by_ip(ip)
        for ip in (
            "10.250.1.1",
            "10.250.2.1",
            "10.250.1.2",
            "10.250.2.4",
            "10.250.2.2",
            "10.250.1.5",
            "10.250.1.3",
            "2001:db8:250::3",
            "2001:DB8:250:0::3",
            "::ffff:10.250.1.3",
            "10.250.9.9",
            "10.250.2.9",
            "not an ip",
        )
    }
    assert got == {
        "10.250.1.1": W("web", "deployment"),
        "10.250.2.1": W("web", "deployment"),
        "10.250.1.2": W("db", "statefulset"),
        "10.250.2.4": W("fluent", "daemonset"),
        "10.250.2.2": W("nightly", "cronjob"),
        "10.250.1.5": W("migrate", "job"),
        "10.250.1.3": W("solo", "pod"),
        "2001:db8:250::3": W("solo", "pod"),
        "2001:DB8:250:0::3": W("solo", "pod"),
        "::ffff:10.250.1.3": W("solo", "pod"),
        "10.250.9.9": None,  # host network
        "10.250.2.9": None,  # Succeeded
        "not an ip": None,
    }
    assert t.pod_by_ip("10.250.1.1") is t.pod_by_ip("10.250.2.1")  # one shared object
    assert t.service_by_ip(cluster_ips["web"]) == ServiceRef(NS, "web", (W("web", "deployment"),))
    assert t.service_by_ip(cluster_ips["mixed"]) == ServiceRef(
        NS, "mixed", (W("db", "statefulset"), W("web", "deployment"))
    )
    assert t.service_by_ip(cluster_ips["empty"]) == ServiceRef(NS, "empty", ())
    assert t.service_by_ip("10.250.1.1") is None
    # cached until something changes, then computed again
    assert t.service_by_ip(cluster_ips["web"]) is t.service_by_ip(cluster_ips["web"])


def test_what_is_kept_of_a_pod(items: list[Obj]) -> None:
    solo = pod_peer(item(items, "Pod", "solo"))
    assert solo is not None
    assert solo.ips == ("10.250.1.3", "2001:db8:250::3") and solo.workload == W("solo", "pod")
    assert solo.uid == item(items, "Pod", "solo")["metadata"]["uid"] and solo.terminating is False
    for name in ("pending", "done"):
        assert pod_peer(item(items, "Pod", name)) is None, name
    hostnet = pod_peer(item(items, "Pod", "hostnet"))
    assert hostnet is not None and hostnet.host_network is True and hostnet.ips == ("10.250.9.9",)


def test_host_network_pods_are_node_addresses(items: list[Obj]) -> None:
    t = loaded(items)
    assert t.node_ips() == frozenset({"10.250.9.9"}) and t.pod_by_ip("10.250.9.9") is None
    second = item(items, "Pod", "hostnet")
    second["metadata"]["uid"] = "another-uid"  # another host-network pod on the same node
    t.apply("pods", "ADDED", second)
    t.apply("pods", "DELETED", item(items, "Pod", "hostnet"))
    assert t.node_ips() == frozenset({"10.250.9.9"})  # the node still has one
    t.apply("pods", "DELETED", second)
    assert t.node_ips() == frozenset()


# -- workloads from the pod alone -----------------------------------------------------------


def test_cronjob_of_job() -> None:
    now = 29_000_000 * 60 + 3600
    assert cronjob_of_job("nightly-29000000", now) == "nightly"
    assert cronjob_of_job("a-b-c-29000001", now) == "a-b-c"
    assert cronjob_of_job("nightly-29002000", now) is None  # scheduled after now + 1 day
    assert cronjob_of_job("backup-2", now) is None
    assert cronjob_of_job("backup-02900000", now) is None  # a leading zero is no minute count
    assert cronjob_of_job("29000000", now) is None
    assert cronjob_of_job("migrate", now) is None


@pytest.mark.parametrize(
    ("owner", "labels", "want"),
    [
        (("ReplicaSet", "web-7c9f8d6b5"), {"pod-template-hash": "7c9f8d6b5"}, W("web", "deployment")),
        (("ReplicaSet", "web-7c9f8d6b5"), {}, W("p", "pod")),  # a ReplicaSet of its own
        (("ReplicaSet", "web-7c9f8d6b5"), {"pod-template-hash": "other"}, W("p", "pod")),
        (("ReplicaSet", "-7c9f8d6b5"), {"pod-template-hash": "7c9f8d6b5"}, W("p", "pod")),
        (("StatefulSet", "db"), {}, W("db", "statefulset")),
        (("DaemonSet", "fluent"), {}, W("fluent", "daemonset")),
        (("Job", "nightly-29000000"), {}, W("nightly", "cronjob")),
        (("Job", "migrate"), {}, W("migrate", "job")),
        (("Rollout", "canary"), {}, W("p", "pod")),
        (None, {}, W("p", "pod")),
    ],
)
def test_peer_workload(owner: tuple[str, str] | None, labels: dict[str, str], want: PeerWorkload) -> None:
    assert peer_workload(NS, "p", owner, labels) == want


def test_canonical_ip() -> None:
    assert canonical_ip("2001:0DB8::0001") == "2001:db8::1"
    assert canonical_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert canonical_ip("None") is None and canonical_ip("") is None and canonical_ip(None) is None


# -- watch events ---------------------------------------------------------------------------


def test_pod_events(items: list[Obj]) -> None:
    t = loaded(items)
    solo = item(items, "Pod", "solo")
    t.apply("pods", "DELETED", solo)
    assert t.pod_by_ip("10.250.1.3") is None and t.pod_by_ip("2001:db8:250::3") is None
    # a pod finishing arrives as MODIFIED (without a field selector) or DELETED (with one)
    db = item(items, "Pod", "db-0")
    db["status"]["phase"] = "Succeeded"
    t.apply("pods", "MODIFIED", db)
    assert t.pod_by_ip("10.250.1.2") is None
    # a pod getting its IP later
    pending = item(items, "Pod", "pending")
    pending["status"].update(podIP="10.250.2.7", podIPs=[{"ip": "10.250.2.7"}], phase="Running")
    t.apply("pods", "MODIFIED", pending)
    assert t.pod_by_ip("10.250.2.7") == W("pending", "pod")
    # a DELETED event for a pod never seen, and one of an object with no UID: no change
    t.apply("pods", "DELETED", {"metadata": {"uid": "nobody"}})
    t.apply("pods", "DELETED", {})
    assert t.sizes()["pods"] == 6


def test_a_reused_ip_goes_to_the_live_pod(items: list[Obj]) -> None:
    index = PodIndex()
    old = item(items, "Pod", "solo")
    new = item(items, "Pod", "db-0")
    new["status"].update(podIP="10.250.1.3", podIPs=[{"ip": "10.250.1.3"}])
    index.apply("ADDED", old)
    index.apply("ADDED", new)  # the newer claim wins
    assert index.lookup("10.250.1.3") == W("db", "statefulset")
    assert index.claims == {"10.250.1.3": [old["metadata"]["uid"], new["metadata"]["uid"]]}
    index.apply("DELETED", new)
    assert index.lookup("10.250.1.3") == W("solo", "pod") and not index.claims
    # the old pod being deleted (it keeps its IP in the API a while): a new claim wins, and
    # neither an event of the old one nor its order of arrival takes the IP back
    old["metadata"]["deletionTimestamp"] = "2026-11-28T22:00:00Z"
    index.apply("MODIFIED", old)
    index.apply("ADDED", new)
    assert index.lookup("10.250.1.3") == W("db", "statefulset")
    old["metadata"]["labels"] = {"touched": "yes"}
    index.apply("MODIFIED", old)
    assert index.lookup("10.250.1.3") == W("db", "statefulset")
    other = PodIndex()
    other.apply("ADDED", new)
    other.apply("ADDED", old)  # listed in the other order
    assert other.lookup("10.250.1.3") == W("db", "statefulset")
    index.apply("DELETED", old)
    assert index.lookup("10.250.1.3") == W("db", "statefulset") and not index.claims
    assert index.lookup("2001:db8:250::3") is None  # the old pod's other IP went with it
    index.apply("DELETED", new)
    assert index.by_ip == {} and index.pods == {}


def test_service_and_slice_events(items: list[Obj], cluster_ips: dict[str, str]) -> None:
    t = loaded(items)
    web_ip = cluster_ips["web"]
    eps = item(items, "EndpointSlice", "web-abcde")
    for ep in eps["endpoints"]:
        ep["conditions"].pop("ready")  # unset means ready: db-0 joins
    t.apply("endpointslices", "MODIFIED", eps)
    assert t.service_by_ip(web_ip) == ServiceRef(NS, "web", (W("db", "statefulset"), W("web", "deployment")))
    t.apply("endpointslices", "DELETED", eps)
    assert t.service_by_ip(web_ip) == ServiceRef(NS, "web", ())
    # a backend's pod gone: the Service names only what is left
    t.apply("pods", "DELETED", item(items, "Pod", "db-0"))
    assert t.service_by_ip(cluster_ips["mixed"]) == ServiceRef(NS, "mixed", (W("web", "deployment"),))
    # a slice that loses its Service label belongs to nothing
    mixed2 = item(items, "EndpointSlice", "mixed-2")
    del mixed2["metadata"]["labels"]["kubernetes.io/service-name"]
    t.apply("endpointslices", "MODIFIED", item(items, "EndpointSlice", "mixed-1") | {"endpoints": []})
    assert t.service_by_ip(cluster_ips["mixed"]) == ServiceRef(NS, "mixed", ())
    svc = item(items, "Service", "web")
    t.apply("services", "DELETED", svc)
    assert t.service_by_ip(web_ip) is None
    t.apply("services", "ADDED", svc)
    assert t.service_by_ip(web_ip) == ServiceRef(NS, "web", ())
    headless = item(items, "Service", "headless")
    assert service_ips(headless) == ((NS, "headless"), ())
    external = copy.deepcopy(svc)
    external["spec"] = {"type": "ExternalName", "externalName": "example.invalid"}
    t.apply("services", "MODIFIED", external)  # a Service turned ExternalName has no ClusterIP
    assert t.service_by_ip(web_ip) is None and t.sizes()["services"] == 2


def test_slice_endpoints(items: list[Obj]) -> None:
    got = slice_endpoints(item(items, "EndpointSlice", "web-abcde"))
    assert got is not None
    _, key, endpoints = got
    uids = {item(items, "Pod", n)["metadata"]["uid"]: n for n in ("web-7c9f8d6b5-qx7lp", "web-7c9f8d6b5-m2v9c")}
    assert key == (NS, "web")
    assert {(uids[e.pod_uid], e.address) for e in endpoints} == {
        ("web-7c9f8d6b5-qx7lp", "10.250.1.1"),
        ("web-7c9f8d6b5-m2v9c", "10.250.2.1"),
    }  # db-0 is not ready


def test_relist_replaces_everything(items: list[Obj]) -> None:
    t = loaded(items)
    index = t.fresh("pods")
    index.apply("ADDED", item(items, "Pod", "solo"))
    t.install("pods", index)
    assert t.pod_by_ip("10.250.1.3") == W("solo", "pod") and t.pod_by_ip("10.250.1.1") is None
    with pytest.raises(ValueError, match="not an index of services"):
        t.install("services", index)


def test_lookups_while_a_thread_applies_events(items: list[Obj]) -> None:
    """The collection loop looks up while the watch threads apply events: never an error,
    and every answer one a state of the tables had."""
    t = loaded(items)
    solo = item(items, "Pod", "solo")
    stop = threading.Event()
    seen: set[PeerWorkload | None] = set()
    errors: list[BaseException] = []

    def look() -> None:
        try:
            while not stop.is_set():
                seen.add(t.pod_by_ip("10.250.1.3"))
                t.service_by_ip("10.96.0.1")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=look)
    thread.start()
    for _ in range(2000):
        t.apply("pods", "DELETED", solo)
        t.apply("pods", "ADDED", solo)
    stop.set()
    thread.join()
    assert not errors and seen <= {None, W("solo", "pod")}


# -- the feed's event handling --------------------------------------------------------------


def test_feed_events_move_the_resource_version(items: list[Obj]) -> None:
    t = PeerTables()
    feed = kube._PeerFeed("pods", None, "/api/v1/pods", t, threading.Event(), server="https://x", credentials="c")
    solo = item(items, "Pod", "solo")
    feed.apply_event({"type": "ADDED", "object": solo})
    assert feed.rv == solo["metadata"]["resourceVersion"] and t.pod_by_ip("10.250.1.3") == W("solo", "pod")
    feed.apply_event({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "999"}}})
    assert feed.rv == "999" and t.sizes()["pods"] == 1
    with pytest.raises(kube._Gone):
        feed.apply_event(
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
        )
    with pytest.raises(kube._WatchError):
        feed.apply_event({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "boom"}})


# -- construction ---------------------------------------------------------------------------


def test_open_peer_directory_with_the_api_unreachable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A started directory that neither fails nor blocks past ``wait`` while its API is
    unreachable, and stops."""
    from otel_podnet.kube_source import ApiTarget

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    d = kube.open_peer_directory(ApiTarget(False, kubeconfig, f"kubeconfig {kubeconfig}"), wait=0.5)
    try:
        assert d.pod_by_ip("10.0.0.1") is None and d.service_by_ip("10.96.0.1") is None
        assert d.node_ips() == frozenset()
        assert all(f.thread.is_alive() for f in d.feeds)
    finally:
        d.stop()
    assert not any(f.thread.is_alive() for f in d.feeds)
    assert "not listed yet after 0.5 s" in caplog.text
