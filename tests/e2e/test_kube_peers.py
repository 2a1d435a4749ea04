"""The peer directory (otel_podnet.kube.KubePeerDirectory) against a real kube-apiserver: the
cluster's pods on two nodes by IP, Services by ClusterIP with the workloads of their ready
endpoints, every change reflected after its watch event, an API restart with a compacted
history (410 Gone: list again), and RBAC exactly as deploy/otel-podnet.yaml grants it.

No controllers run: the tests create the owners, pods, Services and EndpointSlices
themselves and set pod status (IPs, phase) through the /status subresource, as a kubelet
would. Nothing here needs root: the directory is API-side only.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_podnet.kube import KubePeerDirectory, api_client, load_configuration
from otel_podnet.kube_source import ApiTarget
from otel_podnet.peerinfo import PeerWorkload, ServiceRef

from .apiserver import ApiServer
from .test_kube import DELETE_NOW, STRATEGIC, compact_etcd, cronjob_chain, deployment_chain, ref, ref_stub

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "otel-podnet.yaml"
Obj = dict[str, Any]


# -- objects --------------------------------------------------------------------------------


@pytest.fixture
def ns(kube_apiserver: ApiServer) -> Iterator[str]:
    """A namespace of the test's own; every object the test made in it is deleted after."""
    api = kube_apiserver
    name = f"peers-{secrets.token_hex(3)}"
    api.create_namespace(name)
    try:
        yield name
    finally:
        if not api.running():
            api.start()
        for pod in api.call("GET", f"/api/v1/namespaces/{name}/pods")["items"]:
            if pod["metadata"].get("finalizers"):
                api.call(
                    "PATCH",
                    f"/api/v1/namespaces/{name}/pods/{pod['metadata']['name']}",
                    {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json",
                )
        for path in (
            f"/api/v1/namespaces/{name}/pods",
            f"/apis/discovery.k8s.io/v1/namespaces/{name}/endpointslices",
            f"/apis/apps/v1/namespaces/{name}/replicasets",
            f"/apis/apps/v1/namespaces/{name}/deployments",
            f"/apis/batch/v1/namespaces/{name}/jobs",
            f"/apis/batch/v1/namespaces/{name}/cronjobs",
        ):
            api.call("DELETE", path, DELETE_NOW)
        for svc in api.call("GET", f"/api/v1/namespaces/{name}/services")["items"]:  # no deletecollection
            api.call("DELETE", f"/api/v1/namespaces/{name}/services/{svc['metadata']['name']}")
        api.call("DELETE", f"/api/v1/namespaces/{name}")


def pod(
    api: ApiServer,
    ns: str,
    name: str,
    ips: Sequence[str] | None,
    *,
    node: str = "node-a",
    owner: Obj | None = None,
    labels: Mapping[str, str] | None = None,
    phase: str = "Running",
    host_network: bool = False,
    finalizer: bool = False,
) -> Obj:
    """A pod in the API only; with ``ips``, in ``phase`` with those IPs, as a kubelet reports it."""
    obj = api.create_pod(
        ns, name, node, labels=labels, owner_references=[owner] if owner else None, host_network=host_network
    )
    if finalizer:
        api.call(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{name}",
            {"metadata": {"finalizers": ["otel-podnet.test/hold"]}},
            content_type=STRATEGIC,
        )
    if ips:
        obj = api.set_pod_status(ns, name, pod_ip=ips[0], pod_ips=list(ips), phase=phase)
    return obj


def service(api: ApiServer, ns: str, name: str, *, headless: bool = False) -> Obj:
    spec: Obj = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    if headless:
        spec["clusterIP"] = "None"
    return api.create_object(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}
    )


def endpoint(p: Obj, ready: bool = True) -> Obj:
    meta = p["metadata"]
    return {
        "addresses": [p["status"]["podIP"]],
        "conditions": {"ready": ready, "serving": ready, "terminating": False},
        "nodeName": p["spec"]["nodeName"],
        "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
    }


def endpoint_slice(api: ApiServer, ns: str, svc: Obj, name: str, endpoints: Sequence[Obj]) -> Obj:
    """An EndpointSlice of ``svc`` as the EndpointSlice controller writes one."""
    meta = svc["metadata"]
    return api.create_object(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {
                    "kubernetes.io/service-name": meta["name"],
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "ownerReferences": [ref(svc)],
            },
            "addressType": "IPv4",
            "endpoints": list(endpoints),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
    )


def cluster_ip(svc: Obj) -> str:
    return str(svc["spec"]["clusterIP"])


@contextlib.contextmanager
def directory(kubeconfig: Path, **kwargs: Any) -> Iterator[KubePeerDirectory]:
    """The directory over ``kubeconfig``, started and synced; stopped after."""
    cfg = load_configuration(ApiTarget(False, kubeconfig, f"kubeconfig {kubeconfig}"))
    d = KubePeerDirectory(api_client(cfg), server=cfg.host, credentials=str(kubeconfig), **kwargs)
    d.start()
    try:
        assert d.wait_synced(60), "the directory did not list pods, services and endpointslices within 60 s"
        yield d
    finally:
        d.stop()
    assert not any(f.thread.is_alive() for f in d.feeds), "a feed thread outlived stop()"


def wait_for(check: Any, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def W(ns: str, workload: str, kind: str) -> PeerWorkload:
    return PeerWorkload(ns, workload, kind)


# -- the cluster as the directory sees it ---------------------------------------------------


def populate(api: ApiServer, ns: str) -> dict[str, Any]:
    """Pods of every workload kind on two nodes, two Services with EndpointSlices and a
    headless one; returns what the test needs to look them up."""
    web_rs = deployment_chain(api, ns, "web", "web-7c9f8d6b5", {"app": "web"})
    hashed = {"app": "web", "pod-template-hash": "7c9f8d6b5"}
    web_a = pod(api, ns, "web-7c9f8d6b5-qx7lp", ["10.250.1.1"], node="node-a", owner=web_rs, labels=hashed)
    web_b = pod(api, ns, "web-7c9f8d6b5-m2v9c", ["10.250.2.1"], node="node-b", owner=web_rs, labels=hashed)
    db = pod(api, ns, "db-0", ["10.250.1.2"], node="node-a", owner=ref_stub("apps/v1", "StatefulSet", "db"))
    pod(api, ns, "fluent-7tq2k", ["10.250.2.4"], node="node-b", owner=ref_stub("apps/v1", "DaemonSet", "fluent"))
    nightly = cronjob_chain(api, ns, "nightly", "nightly-29000000")
    pod(api, ns, "nightly-29000000-x8k2p", ["10.250.2.2"], node="node-b", owner=nightly)
    migrate = api.create_object(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "migrate", "namespace": ns},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "x.invalid/m:1"}]}
                },
            },
        }
    )
    pod(api, ns, "migrate-5vwq8", ["10.250.1.5"], owner=ref(migrate))
    pod(api, ns, "solo", ["10.250.1.3", "2001:db8:250::3"], node="node-a")
    # never peers: the node's own address, no IP yet, finished
    pod(api, ns, "hostnet", ["10.250.9.9"], node="node-a", host_network=True)
    pod(api, ns, "pending", None, node="node-b")
    pod(api, ns, "done", ["10.250.2.9"], node="node-b", phase="Succeeded")
    web_svc = service(api, ns, "web")
    endpoint_slice(api, ns, web_svc, "web-abcde", [endpoint(web_a), endpoint(web_b), endpoint(db, ready=False)])
    mixed = service(api, ns, "mixed")
    endpoint_slice(api, ns, mixed, "mixed-1", [endpoint(web_a)])
    endpoint_slice(api, ns, mixed, "mixed-2", [endpoint(db)])
    empty = service(api, ns, "empty")
    service(api, ns, "headless", headless=True)
    return {"web": cluster_ip(web_svc), "mixed": cluster_ip(mixed), "empty": cluster_ip(empty)}


def test_pods_and_services_exact(kube_apiserver: ApiServer, ns: str) -> None:
    api = kube_apiserver
    ips = populate(api, ns)
    with directory(api.admin_kubeconfig) as d:
        got = {
            ip: d.pod_by_ip(ip)
            for ip in (
                "10.250.1.1",
                "10.250.2.1",
                "10.250.1.2",
                "10.250.2.4",
                "10.250.2.2",
                "10.250.1.5",
                "10.250.1.3",
                "2001:db8:250::3",
                "2001:0db8:0250:0000:0000:0000:0000:0003",
                "::ffff:10.250.1.3",
                "10.250.9.9",
                "10.250.2.9",
                "10.250.3.3",
            )
        }
        assert got == {
            "10.250.1.1": W(ns, "web", "deployment"),
            "10.250.2.1": W(ns, "web", "deployment"),
            "10.250.1.2": W(ns, "db", "statefulset"),
            "10.250.2.4": W(ns, "fluent", "daemonset"),
            "10.250.2.2": W(ns, "nightly", "cronjob"),
            "10.250.1.5": W(ns, "migrate", "job"),
            "10.250.1.3": W(ns, "solo", "pod"),
            "2001:db8:250::3": W(ns, "solo", "pod"),
            "2001:0db8:0250:0000:0000:0000:0000:0003": W(ns, "solo", "pod"),
            "::ffff:10.250.1.3": W(ns, "solo", "pod"),
            "10.250.9.9": None,  # host network: the node's address
            "10.250.2.9": None,  # Succeeded
            "10.250.3.3": None,  # nobody's
        }
        # pods of one workload share one object (memory at 10,000 pods)
        assert d.pod_by_ip("10.250.1.1") is d.pod_by_ip("10.250.2.1")
        assert d.service_by_ip(ips["web"]) == ServiceRef(ns, "web", (W(ns, "web", "deployment"),))
        assert d.service_by_ip(ips["mixed"]) == ServiceRef(
            ns, "mixed", (W(ns, "db", "statefulset"), W(ns, "web", "deployment"))
        )
        assert d.service_by_ip(ips["empty"]) == ServiceRef(ns, "empty", ())
        assert d.service_by_ip("10.250.1.1") is None  # a pod's IP is no Service
        assert d.pod_by_ip(ips["web"]) is None  # and a ClusterIP no pod
        # "kubernetes" in default: a ClusterIP without endpoints here
        kubernetes = cluster_ip(api.call("GET", "/api/v1/namespaces/default/services/kubernetes"))
        assert d.service_by_ip(kubernetes) == ServiceRef("default", "kubernetes", ())
        assert "10.250.9.9" in d.node_ips()  # the host-network pod's: its node's address
        sizes = d.tables.sizes()
        assert sizes["services"] >= 4 and sizes["endpointslices"] >= 3


def test_changes_follow_the_watch(kube_apiserver: ApiServer, ns: str) -> None:
    api = kube_apiserver
    with directory(api.admin_kubeconfig) as d:
        a = pod(api, ns, "alpha", ["10.251.0.1"], owner=ref_stub("apps/v1", "StatefulSet", "alpha"))
        wait_for(lambda: d.pod_by_ip("10.251.0.1") == W(ns, "alpha", "statefulset"), what="a new pod")
        svc = service(api, ns, "alpha")
        wait_for(lambda: d.service_by_ip(cluster_ip(svc)) == ServiceRef(ns, "alpha", ()), what="a new Service")
        eps = endpoint_slice(api, ns, svc, "alpha-1", [endpoint(a)])
        want = ServiceRef(ns, "alpha", (W(ns, "alpha", "statefulset"),))
        wait_for(lambda: d.service_by_ip(cluster_ip(svc)) == want, what="its endpoints")
        # the endpoint turns not ready: no backend
        eps["endpoints"][0]["conditions"]["ready"] = False
        api.call("PUT", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/alpha-1", eps)
        wait_for(lambda: d.service_by_ip(cluster_ip(svc)) == ServiceRef(ns, "alpha", ()), what="a not-ready endpoint")

        # a pod deleted, its IP reused by a pod of another workload
        api.delete_pod(ns, "alpha")
        wait_for(lambda: d.pod_by_ip("10.251.0.1") is None, what="the deleted pod gone")
        pod(api, ns, "beta", ["10.251.0.1"], owner=ref_stub("apps/v1", "DaemonSet", "beta"))
        wait_for(lambda: d.pod_by_ip("10.251.0.1") == W(ns, "beta", "daemonset"), what="the reused IP")

        # two pods claim one IP: one being deleted (a finalizer holds it, with its IP), the
        # other new; the live one owns the IP whatever the order, and keeps it after
        pod(api, ns, "gamma", ["10.251.0.2"], finalizer=True)
        wait_for(lambda: d.pod_by_ip("10.251.0.2") == W(ns, "gamma", "pod"), what="gamma")
        api.delete_pod(ns, "gamma")
        pod(api, ns, "delta", ["10.251.0.2"])
        wait_for(lambda: d.pod_by_ip("10.251.0.2") == W(ns, "delta", "pod"), what="delta over a deleted gamma")
        api.call(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/gamma",
            {"metadata": {"labels": {"touched": "yes"}}},
            content_type=STRATEGIC,
        )  # an event of the deleted pod: it must not win the IP back
        pod(api, ns, "epsilon", ["10.251.0.4"])  # after that event in the same watch
        wait_for(lambda: d.pod_by_ip("10.251.0.4") == W(ns, "epsilon", "pod"), what="epsilon")
        assert d.pod_by_ip("10.251.0.2") == W(ns, "delta", "pod")
        api.delete_pod(ns, "delta")
        wait_for(lambda: d.pod_by_ip("10.251.0.2") == W(ns, "gamma", "pod"), what="the IP back to gamma")
        api.call(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/gamma",
            {"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
        wait_for(lambda: d.pod_by_ip("10.251.0.2") is None, what="gamma gone at last")

        # a pod that finishes is no peer any more (its IP is free for another)
        pod(api, ns, "job-pod", ["10.251.0.3"])
        wait_for(lambda: d.pod_by_ip("10.251.0.3") == W(ns, "job-pod", "pod"), what="job-pod")
        api.set_pod_status(ns, "job-pod", pod_ip="10.251.0.3", phase="Succeeded")
        wait_for(lambda: d.pod_by_ip("10.251.0.3") is None, what="the finished pod gone")

        # the Service deleted
        api.call("DELETE", f"/api/v1/namespaces/{ns}/services/alpha")
        wait_for(lambda: d.service_by_ip(cluster_ip(svc)) is None, what="the deleted Service gone")


def test_api_restart_with_compacted_history(kube_apiserver: ApiServer, ns: str) -> None:
    """The API server away for a while, etcd's history compacted meanwhile (the watches'
    resourceVersions are gone: 410, list again): lookups answer from the last view all
    along, and every change made after the restart shows."""
    api = kube_apiserver
    pod(api, ns, "stays", ["10.252.0.1"], owner=ref_stub("apps/v1", "StatefulSet", "stays"))
    pod(api, ns, "goes", ["10.252.0.2"])
    svc = service(api, ns, "goes")
    with directory(api.admin_kubeconfig, backoff_cap=1.0) as d:
        assert d.pod_by_ip("10.252.0.2") == W(ns, "goes", "pod")
        api.stop()
        compact_etcd(api)
        down_until = time.monotonic() + 8
        while time.monotonic() < down_until:
            assert d.pod_by_ip("10.252.0.1") == W(ns, "stays", "statefulset")
            assert d.service_by_ip(cluster_ip(svc)) == ServiceRef(ns, "goes", ())
            time.sleep(0.5)
        api.start()
        api.delete_pod(ns, "goes")
        api.call("DELETE", f"/api/v1/namespaces/{ns}/services/goes")
        pod(api, ns, "new", ["10.252.0.3"], owner=ref_stub("apps/v1", "DaemonSet", "new"))
        new_svc = service(api, ns, "new")
        wait_for(
            lambda: (
                d.pod_by_ip("10.252.0.2") is None
                and d.pod_by_ip("10.252.0.3") == W(ns, "new", "daemonset")
                and d.service_by_ip(cluster_ip(svc)) is None
                and d.service_by_ip(cluster_ip(new_svc)) == ServiceRef(ns, "new", ())
            ),
            timeout=60,
            what="every change made after the restart",
        )
        assert d.pod_by_ip("10.252.0.1") == W(ns, "stays", "statefulset")


# -- RBAC as the manifest grants it ---------------------------------------------------------


def _manifest_objects(doc_path: Path) -> list[Obj]:
    return [o for o in yaml.safe_load_all(doc_path.read_text()) if o]


def _token_with_rules(api: ApiServer, ns: str, rules: list[Obj]) -> Path:
    """A kubeconfig of a new ServiceAccount in ``ns`` bound to a ClusterRole with ``rules``."""
    name = f"{ns}-agent"
    api.create_service_account(ns, "agent")
    api.create_object(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": rules,
        }
    )
    api.create_object(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
        }
    )
    return api.kubeconfig_for_token(api.create_sa_token(ns, "agent"), name=name)


def _drop_role(api: ApiServer, ns: str) -> None:
    api.call("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{ns}-agent")
    api.call("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ns}-agent")


def test_the_manifests_rbac_is_enough(kube_apiserver: ApiServer, ns: str) -> None:
    api = kube_apiserver
    ips = populate(api, ns)
    [role] = [o for o in _manifest_objects(MANIFEST) if o["kind"] == "ClusterRole"]
    kubeconfig = _token_with_rules(api, ns, role["rules"])
    try:
        with directory(kubeconfig) as d:
            assert d.pod_by_ip("10.250.2.2") == W(ns, "nightly", "cronjob")
            assert d.service_by_ip(ips["web"]) == ServiceRef(ns, "web", (W(ns, "web", "deployment"),))
    finally:
        _drop_role(api, ns)


def test_without_services_rbac_pods_still_resolve(
    kube_apiserver: ApiServer, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The RBAC of an older release (pods only): pods are named, Services are not, and the
    log says which rule is missing; nothing stops."""
    api = kube_apiserver
    ips = populate(api, ns)
    kubeconfig = _token_with_rules(
        api, ns, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    )
    try:
        cfg = load_configuration(ApiTarget(False, kubeconfig, f"kubeconfig {kubeconfig}"))
        d = KubePeerDirectory(api_client(cfg), server=cfg.host, credentials="sa")
        with caplog.at_level(logging.ERROR, logger="otel_podnet.kube"):
            d.start()
            try:
                assert d.feeds[0].synced.wait(30)
                assert d.pod_by_ip("10.250.1.2") == W(ns, "db", "statefulset")
                wait_for(lambda: len(caplog.records) >= 2, what="the two refusals logged")
                assert d.service_by_ip(ips["web"]) is None
                assert not d.feeds[1].synced.is_set() and not d.feeds[2].synced.is_set()
            finally:
                d.stop()
        lines = sorted(r.getMessage() for r in caplog.records)
        assert len(lines) == 2, lines
        assert (
            "list/watch endpointslices" in lines[0]
            and "grant list/watch on endpointslices.discovery.k8s.io" in lines[0]
        )
        assert "list/watch services" in lines[1] and "grant list/watch on services" in lines[1]
        assert all("HTTP 403" in line for line in lines)
    finally:
        _drop_role(api, ns)


def test_the_api_pod_source_starts_and_stops_its_directory(kube_apiserver: ApiServer, ns: str) -> None:
    """The wiring the agent uses: the node's pod source (otel_podnet.kube.open_source) starts
    the directory with its own configuration, hands it out as ``peer_directory()`` (what
    the agent's Core asks its source for) and stops it when closed."""
    from otel_podnet.kube import open_source

    api = kube_apiserver
    pod(api, ns, "far", ["10.253.0.1"], node="node-b", owner=ref_stub("apps/v1", "StatefulSet", "far"))
    source = open_source(ApiTarget(False, api.admin_kubeconfig, "admin kubeconfig"), "node-a")
    try:
        assert source.peer_directory() is None
        d = source.start_peer_directory(wait=60)
        assert source.peer_directory() is d and source.start_peer_directory() is d
        assert d.pod_by_ip("10.253.0.1") == W(ns, "far", "statefulset")  # a pod of another node
    finally:
        source.close()
    assert not any(f.thread.is_alive() for f in d.feeds)


# -- the agent ------------------------------------------------------------------------------


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (BPF, namespaces)")
def test_the_agent_names_a_peer_on_another_node(
    kube_apiserver: ApiServer, otelcol: Path, node: Any, ns: str, tmp_path: Path
) -> None:
    """The real agent with the API as its pod source: a pod of this node connects to a pod
    the API places on another node (a Deployment's, through its ReplicaSet); the client's
    peer series name that Deployment, with the exact connection count, on the client's
    Resource at the Collector."""
    from . import otlp_json
    from .conftest import agent, exchange, gateway
    from .test_kube import kubeconfig_env, sim_pod

    api = kube_apiserver
    client = sim_pod(api, node, ns, "client")
    rs = deployment_chain(api, ns, "backend", "backend-6f7d8c9b5", {"app": "backend"})
    # on this machine for the traffic, on node-b for the API: not one of this node's pods
    server = node.add_pod("backend-6f7d8c9b5-k2v4x", ns)
    pod(
        api,
        ns,
        "backend-6f7d8c9b5-k2v4x",
        [server.ip4],
        node="node-b",
        owner=rs,
        labels={"app": "backend", "pod-template-hash": "6f7d8c9b5"},
    )
    opened = (
        "podnet.peer.tcp.connections.opened",
        tuple(
            sorted(
                (
                    ("podnet.direction", "outbound"),
                    ("podnet.peer.kind", "pod"),
                    ("podnet.peer.namespace", ns),
                    ("podnet.peer.workload", "backend"),
                    ("podnet.peer.workload.kind", "deployment"),
                )
            )
        ),
    )
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, **kubeconfig_env()}
        with agent(None, env, interval=0.5, kubeconfig=api.admin_kubeconfig) as a:
            exchange(node, client, server, 7810, n=5, up=10_000, down=1_000)

            def client_points() -> dict[Any, float]:
                reqs = otlp_json.requests(col.file)
                pods = {str(r.get("k8s.pod.uid")): p for r, p in otlp_json.by_pod(reqs[-1])} if reqs else {}
                return pods.get(client.uid, {})

            wait_for(lambda: client_points().get(opened) == 5, timeout=60, what="the client's peer series")
            rc, err = a.stop()
    assert rc == 0, err
    assert "peers: listed" in err and "Traceback" not in err
