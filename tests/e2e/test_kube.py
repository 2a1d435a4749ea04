"""The Kubernetes API pod source against a real kube-apiserver, with the real agent process
exporting to the real Collector: pods as the API has them (names, workloads through their
owners), hundreds of pods coming and going, an API outage, IP reuse, and RBAC exactly as
deploy/otel-podnet.yaml grants it.

No controllers run: the tests create Deployments, ReplicaSets, CronJobs and Jobs directly
and set pod status (IPs, phase) through the /status subresource, as a kubelet would. Pods
with traffic are also built on a simulated node (network namespace, veth, kubelet-named
cgroups) under the UID the API gave them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_podnet.simnode import SimNode, SimPod

from . import otlp_json
from .apiserver import ApiServer
from .conftest import AgentProc, agent, agent_map, exchange, gateway, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, namespaces)"),
]

NODE = "sim-node"
REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "otel-podnet.yaml"
IMAGE = "registry.invalid/otel-podnet-e2e/app:1"
STRATEGIC = "application/strategic-merge-patch+json"
DELETE_NOW = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}

OPENED_OUT = ("podnet.tcp.connections.opened", (("podnet.direction", "outbound"),))
OPENED_IN = ("podnet.tcp.connections.opened", (("podnet.direction", "inbound"),))
PAYLOAD_TX = ("podnet.tcp.payload", (("network.io.direction", "transmit"),))
PAYLOAD_RX = ("podnet.tcp.payload", (("network.io.direction", "receive"),))
WORKLOAD_KEYS = {
    "k8s.deployment.name",
    "k8s.replicaset.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.job.name",
    "k8s.cronjob.name",
}

Obj = dict[str, Any]


# -- API objects ----------------------------------------------------------------------------


@pytest.fixture
def ns(kube_apiserver: ApiServer) -> Iterator[str]:
    """A namespace of the test's own; every object the test made in it is deleted after."""
    name = f"kube-{secrets.token_hex(3)}"
    kube_apiserver.create_namespace(name)
    try:
        yield name
    finally:
        delete_namespace(kube_apiserver, name)


def delete_namespace(api: ApiServer, name: str) -> None:
    if not api.running():  # a test failed during its outage
        api.start()
    for path in (
        f"/api/v1/namespaces/{name}/pods",
        f"/apis/apps/v1/namespaces/{name}/replicasets",
        f"/apis/apps/v1/namespaces/{name}/deployments",
        f"/apis/apps/v1/namespaces/{name}/statefulsets",
        f"/apis/apps/v1/namespaces/{name}/daemonsets",
        f"/apis/batch/v1/namespaces/{name}/jobs",
        f"/apis/batch/v1/namespaces/{name}/cronjobs",
    ):
        api.call("DELETE", path, DELETE_NOW)
    # no namespace controller runs: the namespace itself stays Terminating, empty
    api.call("DELETE", f"/api/v1/namespaces/{name}")


def ref(obj: Obj) -> Obj:
    """A controller ownerReference to ``obj`` (as the API returned it)."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def ref_stub(api_version: str, kind: str, name: str) -> Obj:
    """An ownerReference to an owner the agent never needs to fetch (StatefulSet, DaemonSet)."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": secrets.token_hex(16), "controller": True}


def template(labels: Mapping[str, str], restart_policy: str | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "app", "image": IMAGE}]}
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def deployment_chain(api: ApiServer, ns: str, deployment: str, replicaset: str, labels: Mapping[str, str]) -> Obj:
    """A Deployment and a ReplicaSet it controls; returns the ownerReference for pods."""
    spec = {"replicas": 0, "selector": {"matchLabels": dict(labels)}, "template": template(labels)}
    d = api.create_object(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment, "namespace": ns}, "spec": spec}
    )
    rs = api.create_object(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": replicaset, "namespace": ns, "labels": dict(labels), "ownerReferences": [ref(d)]},
            "spec": spec,
        }
    )
    return ref(rs)


def cronjob_chain(api: ApiServer, ns: str, cronjob: str, job: str) -> Obj:
    """A (suspended) CronJob and a Job it controls; returns the ownerReference for pods."""
    job_spec = {"suspend": True, "template": template({"job": job}, restart_policy="Never")}
    c = api.create_object(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": cronjob, "namespace": ns},
            "spec": {"schedule": "0 0 1 1 *", "suspend": True, "jobTemplate": {"spec": job_spec}},
        }
    )
    j = api.create_object(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job, "namespace": ns, "ownerReferences": [ref(c)]},
            "spec": job_spec,
        }
    )
    return ref(j)


def api_pod(
    api: ApiServer,
    ns: str,
    name: str,
    ips: Sequence[str],
    *,
    node: str = NODE,
    owner: Obj | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """A pod that exists in the API only, Running with ``ips``; returns its UID."""
    pod = api.create_pod(ns, name, node, labels=labels, owner_references=[owner] if owner else None)
    api.set_pod_status(ns, name, pod_ip=ips[0], pod_ips=list(ips))
    return str(pod["metadata"]["uid"])


def sim_pod(
    api: ApiServer,
    node: SimNode,
    ns: str,
    name: str,
    *,
    owner: Obj | None = None,
    labels: Mapping[str, str] | None = None,
) -> SimPod:
    """A pod in the API and on the simulated node under the same UID, then Running with the
    simulated pod's address, as a kubelet reports it."""
    pod = api.create_pod(ns, name, NODE, labels=labels, owner_references=[owner] if owner else None)
    sp = node.add_pod(name, ns, uid=str(pod["metadata"]["uid"]), labels=dict(labels or {}))
    api.set_pod_status(ns, name, pod_ip=sp.ip4)
    return sp


def compact_etcd(api: ApiServer) -> None:
    """Write a key straight into etcd (outside the API's /registry) and compact the history up
    to it, as etcd's periodic compaction would: a watch resumed from an older resourceVersion
    now gets 410 Gone and must list again."""

    def post(path: str, body: Obj) -> Obj:
        req = urllib.request.Request(
            api.etcd_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return dict(json.loads(r.read()))

    key, value = base64.b64encode(b"/otel-podnet-e2e/bump").decode(), base64.b64encode(b"1").decode()
    revision = int(post("/v3/kv/put", {"key": key, "value": value})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": revision, "physical": True})
    post("/v3/kv/deleterange", {"key": key})


def api_pods_of_node(api: ApiServer) -> dict[str, Obj]:
    doc = api.call("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={NODE}"})
    return {str(p["metadata"]["uid"]): p for p in doc["items"]}


def pod_ips(pod: Obj) -> set[str]:
    status = pod.get("status") or {}
    return {str(i["ip"]) for i in status.get("podIPs") or []}


# -- what the agent shows -------------------------------------------------------------------


def kubeconfig_env() -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": ""}  # never in-cluster, whatever the environment says


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def agent_view(a: AgentProc) -> tuple[float, dict[str, dict[str, str]]]:
    """The agent's podnet.agent.pods gauge, and uid -> Resource labels of every pod series."""
    text = scrape(a.prom_port or 0)
    gauge = -1.0
    pods: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("podnet_agent_pods{") or line.startswith("podnet_agent_pods "):
            gauge = float(line.rsplit(" ", 1)[1])
        elif line.startswith("podnet_tcp_connections_opened_total{") and 'podnet_direction="outbound"' in line:
            labels = dict(_LABEL.findall(line.split("{", 1)[1].rsplit("}", 1)[0]))
            if "k8s_pod_uid" in labels:
                pods[labels["k8s_pod_uid"]] = labels
    return gauge, pods


def last_request(path: Path) -> dict[str, Any] | None:
    """The newest complete request in the Collector's file output (read from the end)."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        buf = b""
        while pos > 0:
            step = min(1 << 20, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            lines = buf.split(b"\n")
            complete = [ln for ln in lines[1 if pos > 0 else 0 : -1] if ln.strip()]
            if complete:
                try:
                    return dict(json.loads(complete[-1]))
                except ValueError:
                    return None
    return None


def exported(path: Path) -> dict[str, tuple[dict[str, Any], dict[otlp_json.Point, float]]]:
    """uid ("node" for the node) -> (Resource attributes, points) of the newest request."""
    req = last_request(path)
    if req is None:
        return {}
    return {str(res.get("k8s.pod.uid", "node")): (res, pts) for res, pts in otlp_json.by_pod(req)}


def ours(resources: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    """Drop pods this test knows nothing of: the agent also reports pods it knows by their
    cgroup only, such as those of simulated nodes that tests running concurrently on this
    machine build. A pod from our API server has a name; ``known`` adds our pods' UIDs."""
    return {u: v for u, v in resources.items() if u == "node" or u in known or "k8s.pod.name" in v[0]}


def kernel_pod_ips(pid: int, timeout: float = 20.0) -> list[str]:
    """Every key of the agent's podnet_pod_ips map (found through the agent's own map fds, so
    other BPF programs on this machine do not matter), IPv4 unmapped from ::ffff:a.b.c.d.
    Waits for the agent to have loaded its BPF object."""
    deadline = time.monotonic() + timeout
    while True:
        keys = _dump_pod_ips(pid)
        if keys is not None:
            return keys
        if time.monotonic() > deadline:
            raise AssertionError(f"agent {pid} holds no podnet_pod_ips map")
        time.sleep(0.2)


def _dump_pod_ips(pid: int) -> list[str] | None:
    """The agent's pod-IP map keys, or None while it holds no such map."""
    entries = agent_map(pid, "podnet_pod_ips")
    if entries is None:
        return None
    return [str(a.ipv4_mapped or a) for a in (ipaddress.IPv6Address(key) for key, _ in entries)]


def log_lines(err: str, needle: str) -> list[str]:
    return [ln for ln in err.splitlines() if needle in ln]


def assert_agent_matches_api(
    api: ApiServer, a: AgentProc, collector_file: Path, count: int, created: set[str], what: str
) -> None:
    """The agent's view (its /metrics), the kernel's pod-IP map and the Collector's newest
    request all hold exactly the pods of the node the API has, with their names and IPs."""
    truth = api_pods_of_node(api)
    assert len(truth) == count
    want_view = {uid: (p["metadata"]["name"], p["metadata"]["namespace"]) for uid, p in truth.items()}
    want_ips = sorted(ip for p in truth.values() for ip in pod_ips(p))

    def agent_matches() -> bool:
        try:
            gauge, pods = agent_view(a)
        except OSError:  # /metrics not served yet: a busy machine can take seconds to start it
            assert a.proc.poll() is None, "the agent exited"
            return False
        got = {
            uid: (lb.get("k8s_pod_name"), lb.get("k8s_namespace_name"))
            for uid, lb in pods.items()
            if uid in created or "k8s_pod_name" in lb
        }
        return gauge == len(want_view) and got == want_view

    wait_for(agent_matches, timeout=30, what=f"the agent's view after {what}")
    wait_for(lambda: sorted(kernel_pod_ips(a.proc.pid)) == want_ips, timeout=10, what=f"the IP map after {what}")
    keys = kernel_pod_ips(a.proc.pid)
    assert sorted(keys) == want_ips and len(set(keys)) == len(keys)

    def collector_matches() -> bool:
        got = ours(exported(collector_file), created)
        return set(got) - {"node"} == set(want_view) and all(
            (got[u][0].get("k8s.pod.name"), got[u][0].get("k8s.namespace.name")) == want_view[u] for u in want_view
        )

    wait_for(collector_matches, timeout=15, what=f"the Collector's view after {what}")


# -- a. names, workloads, within one interval -----------------------------------------------


def test_pods_appear_with_names_and_workloads(
    kube_apiserver: ApiServer, otelcol: Path, node: SimNode, ns: str, tmp_path: Path
) -> None:
    api = kube_apiserver
    # The Deployment's name is not the ReplicaSet's prefix: only the API can tell it.
    rs = deployment_chain(api, ns, "storefront", "sf-5d8f9c7b6", {"app": "sf"})
    job = cronjob_chain(api, ns, "nightly", "nightly-29000000")
    other_uid = api_pod(api, ns, "elsewhere", ["198.19.200.1"], node="other-node")
    solo_uid = api_pod(api, ns, "solo", ["198.19.200.2"])
    interval = 1.0
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, **kubeconfig_env()}
        with agent(None, env, interval=interval, kubeconfig=api.admin_kubeconfig) as a:
            wait_for(lambda: solo_uid in exported(col.file), what="the pod listed at start")
            # each pod in the export within one interval of its creation (plus the export itself
            # and the Collector's file flush), already under its full name
            slack = interval + 1.5
            web = sim_pod(api, node, ns, "sf-5d8f9c7b6-qx7lp", owner=rs, labels={"pod-template-hash": "5d8f9c7b6"})
            wait_for(lambda: web.uid in exported(col.file), timeout=slack, what="web in the export")
            assert exported(col.file)[web.uid][0]["k8s.deployment.name"] == "storefront"
            db_owner = ref_stub("apps/v1", "StatefulSet", "db")
            db = sim_pod(api, node, ns, "db-0", owner=db_owner, labels={"app.kubernetes.io/name": "database"})
            wait_for(lambda: db.uid in exported(col.file), timeout=slack, what="db in the export")
            cron_uid = api_pod(api, ns, "nightly-29000000-x8k2p", ["198.19.200.3"], owner=job)
            wait_for(lambda: cron_uid in exported(col.file), timeout=slack, what="the CronJob's pod in the export")
            ds = api.create_pod(ns, "fluent-7tq2k", NODE, owner_references=[ref_stub("apps/v1", "DaemonSet", "fluent")])
            api.call(
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/fluent-7tq2k",
                {"metadata": {"annotations": {"resource.opentelemetry.io/service.name": "logs"}}},
                content_type=STRATEGIC,
            )
            api.set_pod_status(ns, "fluent-7tq2k", pod_ip="198.19.200.4")
            ds_uid = str(ds["metadata"]["uid"])
            wait_for(lambda: ds_uid in exported(col.file), timeout=slack, what="the DaemonSet's pod in the export")

            exchange(node, web, db, 7500, n=5, up=20_000, down=3_000)
            wait_for(
                lambda: exported(col.file).get(db.uid, ({}, {}))[1].get(PAYLOAD_RX) == 100_000,
                what="the traffic in the export",
            )
            rc, err = a.stop()
        assert rc == 0, err
        time.sleep(0.5)
        requests = otlp_json.requests(col.file)

    mine = {solo_uid, web.uid, db.uid, cron_uid, ds_uid}
    last = ours({str(r.get("k8s.pod.uid", "node")): (r, p) for r, p in otlp_json.by_pod(requests[-1])}, mine)
    assert sorted(last) == sorted([*mine, "node"])
    common = {"k8s.namespace.name": ns, "k8s.node.name": NODE, "service.namespace": ns}
    res_web, p_web = last[web.uid]
    assert res_web == res_web | common | {
        "k8s.pod.name": "sf-5d8f9c7b6-qx7lp",
        "k8s.pod.uid": web.uid,
        "k8s.replicaset.name": "sf-5d8f9c7b6",
        "k8s.deployment.name": "storefront",
        "service.name": "storefront",
        "service.instance.id": f"{ns}.sf-5d8f9c7b6-qx7lp",
    }
    res_db, p_db = last[db.uid]
    assert res_db == res_db | common | {
        "k8s.pod.name": "db-0",
        "k8s.statefulset.name": "db",
        "service.name": "database",
    }
    res_cron = last[cron_uid][0]
    assert res_cron == res_cron | common | {
        "k8s.pod.name": "nightly-29000000-x8k2p",
        "k8s.job.name": "nightly-29000000",
        "k8s.cronjob.name": "nightly",
        "service.name": "nightly",
    }
    res_ds = last[ds_uid][0]
    assert res_ds == res_ds | common | {
        "k8s.pod.name": "fluent-7tq2k",
        "k8s.daemonset.name": "fluent",
        "service.name": "logs",
    }
    res_solo = last[solo_uid][0]
    assert res_solo == res_solo | common | {"k8s.pod.name": "solo", "service.name": "solo"}
    assert not set(res_solo) & WORKLOAD_KEYS
    # the figures are the workloads' own
    assert (p_web[OPENED_OUT], p_web[PAYLOAD_TX], p_web[PAYLOAD_RX]) == (5, 100_000, 15_000)
    assert (p_db[OPENED_IN], p_db[PAYLOAD_RX], p_db[PAYLOAD_TX]) == (5, 100_000, 15_000)
    assert last[cron_uid][1][PAYLOAD_TX] == 0
    # the pod of another node never appeared, in any request
    for req in requests:
        for res, _ in otlp_json.by_pod(req):
            assert res.get("k8s.pod.uid") != other_uid and res.get("k8s.pod.name") != "elsewhere"


# -- b. hundreds of pods in waves -----------------------------------------------------------


def test_300_pods_in_waves_view_and_ip_map_exact(
    kube_apiserver: ApiServer, otelcol: Path, ns: str, tmp_path: Path
) -> None:
    """Three waves of 100 pods (API objects only, Running with their IPs, half of them
    dual-stack): each wave is created while the previous one is deleted, then the last is
    deleted too. After each step the agent's view, the kernel's pod-IP map and the
    Collector's newest request hold exactly the pods the API has for the node."""
    api = kube_apiserver
    created: set[str] = set()

    def ips_of(wave: int, i: int) -> list[str]:
        ips = [f"198.19.{wave}.{i}"]
        if i % 2 == 0:
            ips.append(f"2001:db8:19:{wave}::{i:x}")
        return ips

    with ThreadPoolExecutor(max_workers=8) as pool, gateway(otelcol, tmp_path / "col") as col:

        def create(wave: int) -> list[str]:
            names = [f"w{wave}-{i:03d}" for i in range(1, 101)]
            created.update(pool.map(lambda n: api_pod(api, ns, n, ips_of(wave, int(n[-3:]))), names))
            return names

        def delete(names: list[str]) -> None:
            list(pool.map(lambda n: api.delete_pod(ns, n), names))

        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, **kubeconfig_env()}
        with agent(None, env, interval=1.0, prometheus=True, kubeconfig=api.admin_kubeconfig) as a:
            previous: list[str] = []
            for wave in (1, 2, 3, 4):
                current = create(wave) if wave <= 3 else []
                delete(previous)
                previous = current
                assert_agent_matches_api(api, a, col.file, len(current), created, f"wave {wave}")
            rc, err = a.stop()
    assert rc == 0, err
    assert len(created) == 300
    assert not log_lines(err, "skipped") and "Traceback" not in err


# -- c. the API server down for 30 s --------------------------------------------------------


def test_api_outage_counting_goes_on_and_nothing_is_missed(
    kube_apiserver: ApiServer, otelcol: Path, node: SimNode, ns: str, tmp_path: Path
) -> None:
    api = kube_apiserver
    a_pod = sim_pod(api, node, ns, "client-a")
    b_pod = sim_pod(api, node, ns, "server-b")
    gone_uid = api_pod(api, ns, "gone", ["198.19.201.1"])
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, **kubeconfig_env()}
        with agent(None, env, interval=0.5, kubeconfig=api.admin_kubeconfig) as ag:
            wait_for(lambda: b_pod.uid in exported(col.file), what="the agent's first export")
            exchange(node, a_pod, b_pod, 7600, n=4, up=10_000, down=1_000)
            wait_for(
                lambda: exported(col.file).get(a_pod.uid, ({}, {}))[1].get(PAYLOAD_TX) == 40_000, what="first figures"
            )
            want_tx, want_opened = 40_000, 4

            api.stop()
            compact_etcd(api)
            down_until = time.monotonic() + 30
            rounds = 0
            while time.monotonic() < down_until:
                exchange(node, a_pod, b_pod, 7601 + rounds, n=2, up=10_000, down=1_000)
                want_tx, want_opened, rounds = want_tx + 20_000, want_opened + 2, rounds + 1
                time.sleep(2)
            assert ag.proc.poll() is None, "the agent died while the API server was down"
            # counted, and exported, while the API was away; the pods keep their names
            wait_for(
                lambda: exported(col.file).get(a_pod.uid, ({}, {}))[1].get(PAYLOAD_TX) == want_tx,
                what="figures during the outage",
            )
            res_a = exported(col.file)[a_pod.uid][0]
            assert res_a["k8s.pod.name"] == "client-a" and gone_uid in exported(col.file)

            api.start()
            # changes right after the restart, while the agent may still be backing off
            c_pod = sim_pod(api, node, ns, "client-c")
            api.delete_pod(ns, "gone")
            api.call(
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/server-b",
                {"metadata": {"labels": {"app.kubernetes.io/name": "renamed"}}},
                content_type=STRATEGIC,
            )

            def caught_up() -> bool:
                got = exported(col.file)
                return (
                    got.get(c_pod.uid, ({}, {}))[0].get("k8s.pod.name") == "client-c"
                    and gone_uid not in got
                    and got.get(b_pod.uid, ({}, {}))[0].get("service.name") == "renamed"
                )

            wait_for(caught_up, timeout=45, what="every change made after the restart")
            exchange(node, c_pod, b_pod, 7700, n=3, up=5_000, down=700)
            exchange(node, a_pod, b_pod, 7701, n=1, up=10_000, down=1_000)
            want_tx, want_opened = want_tx + 10_000, want_opened + 1
            wait_for(
                lambda: (
                    exported(col.file).get(c_pod.uid, ({}, {}))[1].get(PAYLOAD_TX) == 15_000
                    and exported(col.file).get(a_pod.uid, ({}, {}))[1].get(PAYLOAD_TX) == want_tx
                ),
                what="the figures after the outage",
            )
            # The peer directory's watches retry on their own backoff (up to 10 s), apart
            # from the pod source's: it is back once it names the pod made after the restart.
            c_to_b = (
                "podnet.peer.tcp.connections.opened",
                (
                    ("podnet.direction", "inbound"),
                    ("podnet.peer.kind", "pod"),
                    ("podnet.peer.namespace", ns),
                    ("podnet.peer.workload", "client-c"),
                    ("podnet.peer.workload.kind", "pod"),
                ),
            )
            wait_for(
                lambda: exported(col.file).get(b_pod.uid, ({}, {}))[1].get(c_to_b) == 3,
                timeout=60,
                what="the peer directory to name client-c",
            )
            rc, err = ag.stop()
        assert rc == 0, err
        time.sleep(0.5)
        got = exported(col.file)

    assert rounds >= 5
    p_a, p_b, p_c = got[a_pod.uid][1], got[b_pod.uid][1], got[c_pod.uid][1]
    assert (p_a[OPENED_OUT], p_a[PAYLOAD_TX], p_a[PAYLOAD_RX]) == (want_opened, want_tx, want_opened * 1_000)
    assert (p_c[OPENED_OUT], p_c[PAYLOAD_TX], p_c[PAYLOAD_RX]) == (3, 15_000, 2_100)
    assert (p_b[OPENED_IN], p_b[PAYLOAD_RX]) == (want_opened + 3, want_tx + 15_000)
    assert p_b[PAYLOAD_TX] == want_opened * 1_000 + 2_100
    assert got[b_pod.uid][0]["service.name"] == "renamed"
    # the outage was reported, at a bounded rate, and so was the recovery: by the pod source,
    # and once for the three watches of the peer directory (issue 12)
    unreachable = log_lines(err, "unreachable")
    assert 1 <= len([ln for ln in unreachable if "peers:" not in ln]) <= 2, err
    assert 1 <= len([ln for ln in unreachable if "peers:" in ln]) <= 2, err
    again = log_lines(err, "reachable again")
    assert [ln for ln in again if "peers:" not in ln] and [ln for ln in again if "peers:" in ln], err
    assert log_lines(err, f"listed the pods of node {NODE} again (410 Gone"), err  # history compacted meanwhile
    assert "Traceback" not in err


# -- d. IP reuse ------------------------------------------------------------------------------


def test_reused_ip_counts_for_the_new_pod(
    kube_apiserver: ApiServer, otelcol: Path, node: SimNode, ns: str, tmp_path: Path
) -> None:
    api = kube_apiserver
    # a process outside any pod cgroup, in a network namespace with the pods' address: only
    # the IP fallback (the kernel's pod-IP map) can attribute it
    host = node.add_pod("ip-only", ns, in_pod_cgroup=False)
    peer = sim_pod(api, node, ns, "peer")
    x_uid = api_pod(api, ns, "pod-x", [host.ip4])
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, **kubeconfig_env()}
        with agent(None, env, interval=0.5, prometheus=True, kubeconfig=api.admin_kubeconfig) as a:
            wait_for(lambda: host.ip4 in kernel_pod_ips(a.proc.pid), what="X's IP in the kernel map")
            exchange(node, host, peer, 7800, n=3, up=7_000, down=500)
            wait_for(lambda: exported(col.file).get(x_uid, ({}, {}))[1].get(PAYLOAD_TX) == 21_000, what="X's traffic")

            api.delete_pod(ns, "pod-x")
            y_uid = api_pod(api, ns, "pod-y", [host.ip4])

            def y_owns_the_ip() -> bool:
                _, pods = agent_view(a)
                return y_uid in pods and x_uid not in pods and kernel_pod_ips(a.proc.pid).count(host.ip4) == 1

            wait_for(y_owns_the_ip, what="Y in the view, X gone")
            exchange(node, host, peer, 7801, n=4, up=5_000, down=300)
            wait_for(lambda: exported(col.file).get(y_uid, ({}, {}))[1].get(PAYLOAD_TX) == 20_000, what="Y's traffic")
            rc, err = a.stop()
        assert rc == 0, err
        time.sleep(0.5)
        requests = otlp_json.requests(col.file)

    x_tx = [
        pts[PAYLOAD_TX] for req in requests for res, pts in otlp_json.by_pod(req) if res.get("k8s.pod.uid") == x_uid
    ]
    assert x_tx and max(x_tx) == 21_000  # X never got a byte of Y's traffic
    last = {str(r.get("k8s.pod.uid", "node")): (r, p) for r, p in otlp_json.by_pod(requests[-1])}
    res_y, p_y = last[y_uid]
    assert res_y["k8s.pod.name"] == "pod-y"
    assert (p_y[OPENED_OUT], p_y[PAYLOAD_TX], p_y[PAYLOAD_RX]) == (4, 20_000, 1_200)
    assert x_uid not in last
    p_peer = last[peer.uid][1]
    assert (p_peer[OPENED_IN], p_peer[PAYLOAD_RX], p_peer[PAYLOAD_TX]) == (7, 41_000, 2_700)


# -- e. RBAC as deploy/otel-podnet.yaml grants it ---------------------------------------------


def run_once(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_podnet",
            "run",
            "--kubeconfig",
            str(kubeconfig),
            "--node-name",
            NODE,
            "--exporter",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **kubeconfig_env()},
    )


def test_rbac_of_the_manifest_and_denials(kube_apiserver: ApiServer, otelcol: Path, ns: str, tmp_path: Path) -> None:
    api = kube_apiserver
    objs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    made: list[str] = []
    try:
        for obj in objs:
            if obj["kind"] not in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
                continue
            path = api.resource_path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))
            status, body = api.request("POST", path, obj)
            assert status in (201, 409), body
            made.append(f"{path}/{obj['metadata']['name']}")
        sa = next(o for o in objs if o["kind"] == "ServiceAccount")["metadata"]
        token = api.create_sa_token(sa["namespace"], sa["name"])
        kubeconfig = api.kubeconfig_for_token(token, name="otel-podnet-sa")

        # works: pods listed and watched, owners resolved with exactly these rules
        rs = deployment_chain(api, ns, "checkout", "co-7c9d8", {"app": "co"})
        job = cronjob_chain(api, ns, "report", "report-1")
        rs_uid = api_pod(api, ns, "co-7c9d8-aaaaa", ["198.19.202.1"], owner=rs)
        with gateway(otelcol, tmp_path / "col") as col:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint, **kubeconfig_env()}
            with agent(None, env, interval=0.5, kubeconfig=kubeconfig) as a:
                job_uid = api_pod(api, ns, "report-1-bbbbb", ["198.19.202.2"], owner=job)  # seen by the watch
                wait_for(lambda: {rs_uid, job_uid} <= exported(col.file).keys(), what="both pods exported")
                got = exported(col.file)
                rc, err = a.stop()
        assert rc == 0, err
        assert got[rs_uid][0]["k8s.deployment.name"] == "checkout"
        assert got[rs_uid][0]["k8s.replicaset.name"] == "co-7c9d8"
        assert (got[job_uid][0]["k8s.cronjob.name"], got[job_uid][0]["k8s.job.name"]) == ("report", "report-1")
        assert "Forbidden" not in err and "cannot" not in err

        # a service account without the binding: exit 2, one line naming the permission
        api.create_service_account(ns, "unbound")
        denied = run_once(api.kubeconfig_for_token(api.create_sa_token(ns, "unbound"), name="unbound"))
        assert denied.returncode == 2, denied.stderr
        lines = denied.stderr.strip().splitlines()
        assert lines[-1] == (
            f"otel-podnet: Kubernetes API at {api.url}: 403 Forbidden: system:serviceaccount:{ns}:unbound "
            "cannot list pods at the cluster scope; grant get/list/watch on pods (deploy/otel-podnet.yaml)"
        )
        assert len(log_lines(denied.stderr, "otel-podnet:")) == 1 and "Traceback" not in denied.stderr

        # list without watch: refused at start too
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{ns}-list-only"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        }
        api.create_object(role)
        made.append(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ns}-list-only")
        api.create_object(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{ns}-list-only"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{ns}-list-only"},
                "subjects": [{"kind": "ServiceAccount", "name": "list-only", "namespace": ns}],
            }
        )
        made.append(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{ns}-list-only")
        api.create_service_account(ns, "list-only")
        listing_cfg = api.kubeconfig_for_token(api.create_sa_token(ns, "list-only"), name="list-only")
        listing = run_once(listing_cfg)
        assert listing.returncode == 2, listing.stderr
        assert listing.stderr.strip().splitlines()[-1] == (
            f"otel-podnet: Kubernetes API at {api.url}: 403 Forbidden: the credentials of kubeconfig {listing_cfg} "
            "may list but not watch pods at the cluster scope; grant get/list/watch on pods (deploy/otel-podnet.yaml)"
        )

        # a token the API does not accept
        bad = api.kubeconfig_for_token("not-a-token", name="bad-token")
        rejected = run_once(bad)
        assert rejected.returncode == 2, rejected.stderr
        assert rejected.stderr.strip().splitlines()[-1] == (
            f"otel-podnet: Kubernetes API at {api.url}: 401 Unauthorized: the credentials of kubeconfig {bad} "
            "were rejected"
        )
    finally:
        for path in reversed(made):  # the manifest's namespace last; it stays Terminating, empty
            api.request("DELETE", path)
