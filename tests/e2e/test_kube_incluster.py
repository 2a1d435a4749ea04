"""The Kubernetes API pod source in-cluster, as the DaemonSet runs it, against a real
kube-apiserver: KUBERNETES_SERVICE_HOST/PORT, the service account token the TokenRequest API
mints for the manifest's ServiceAccount (bound to a pod, as the kubelet's projected tokens
are) and the server's CA, in a directory laid out as the kubelet writes it. No kubeconfig
and no ``kubernetes`` package on this path (otel_podnet.kubeapi).

- the source's view is exactly the node's pods, with workloads through their owners, and a
  rotated token is what every later request uses, the old one being dead by then;
- the real ``otel-podnet run`` process, finding the token where a pod has it, exports
  exactly the node's pods to the real Collector.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_podnet import kube, kube_source
from otel_podnet.kube_source import choose_target
from otel_podnet.settings import ConfigError, Settings

from .apiserver import ApiServer
from .conftest import gateway, wait_for
from .incluster import ServiceAccountDir, agent_in_cluster, grant_manifest_rbac, in_cluster_env
from .test_kube import DELETE_NOW, delete_namespace, deployment_chain, exported

pytestmark = [pytest.mark.e2e]

NODE = "sim-node"
OTHER = "node-b"


@pytest.fixture(scope="module")
def manifest_sa(kube_apiserver: ApiServer) -> Iterator[tuple[str, str]]:
    """The manifest's ServiceAccount and its ClusterRole/Binding, as deployed."""
    ns, name, made = grant_manifest_rbac(kube_apiserver)
    try:
        yield ns, name
    finally:
        for path in reversed(made):  # the manifest's namespace last; it stays Terminating, empty
            kube_apiserver.request("DELETE", path)


@pytest.fixture
def ns(kube_apiserver: ApiServer) -> Iterator[str]:
    name = f"incluster-{secrets.token_hex(3)}"
    kube_apiserver.create_namespace(name)
    try:
        yield name
    finally:
        delete_namespace(kube_apiserver, name)


def running_pod(api: ApiServer, ns: str, name: str, ip: str, node: str = NODE, **kw: Any) -> str:
    pod = api.create_pod(ns, name, node, **kw)
    api.set_pod_status(ns, name, pod_ip=ip)
    return str(pod["metadata"]["uid"])


def bound_token(api: ApiServer, sa: tuple[str, str], holder: str) -> tuple[str, str]:
    """A token of ``sa`` bound to a pod of its own (on another node): deleting that pod
    invalidates the token, as a real pod's end invalidates its projected token."""
    pod = api.call(
        "POST",
        f"/api/v1/namespaces/{sa[0]}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": holder},
            "spec": {
                "nodeName": OTHER,
                "serviceAccountName": sa[1],
                "automountServiceAccountToken": False,
                "containers": [{"name": "app", "image": "registry.invalid/otel-podnet-e2e/app:1"}],
            },
        },
    )
    return api.create_sa_token(sa[0], sa[1], bound_pod=(holder, str(pod["metadata"]["uid"]))), holder


def settings() -> Settings:
    return Settings(
        node_name=NODE,
        pods_file=None,
        kubeconfig=None,
        cgroup_root=None,
        interval=10.0,
        exporters=(),
        prometheus_address=("0.0.0.0", 9464),
        health_address=None,
        log_level="info",
        log_format="text",
    )


def view(source: kube.KubePodSource) -> dict[str, tuple[str, str, tuple[str, ...], dict[str, str]]]:
    return {uid: (p.namespace, p.name, p.ips, dict(p.workload)) for uid, p in source.pods().items()}


def test_in_cluster_source_sees_the_exact_pods_and_follows_the_token(
    kube_apiserver: ApiServer, manifest_sa: tuple[str, str], ns: str, tmp_path: Path
) -> None:
    api = kube_apiserver
    token1, holder1 = bound_token(api, manifest_sa, f"holder-{secrets.token_hex(3)}")
    sa = ServiceAccountDir(tmp_path / "serviceaccount", token1, api.ca_file, manifest_sa[0])
    rs = deployment_chain(api, ns, "checkout", "co-7c9d8", {"app": "co"})
    web = running_pod(api, ns, "co-7c9d8-aaaaa", "198.19.210.1", owner_references=[rs])
    solo = running_pod(api, ns, "solo", "198.19.210.2")
    running_pod(api, ns, "elsewhere", "198.19.210.3", node=OTHER)  # another node's: never in the view

    env = in_cluster_env(api)
    target = choose_target(settings(), env, tmp_path / "no-home", sa.token_file)
    assert target is not None and target.in_cluster and target.kubeconfig is None
    source = kube.open_source(target, NODE, env=env, token_file=sa.token_file, ca_file=sa.ca_file)
    try:
        assert source.server == api.url
        source.refresh()
        assert view(source) == {
            web: (
                ns,
                "co-7c9d8-aaaaa",
                ("198.19.210.1",),
                {"k8s.replicaset.name": "co-7c9d8", "k8s.deployment.name": "checkout"},
            ),
            solo: (ns, "solo", ("198.19.210.2",), {}),
        }

        # the kubelet rotates the token; the old one then dies with its pod
        token2, _ = bound_token(api, manifest_sa, f"holder-{secrets.token_hex(3)}")
        sa.rotate(token2)
        api.call("DELETE", f"/api/v1/namespaces/{manifest_sa[0]}/pods/{holder1}", DELETE_NOW)
        wait_for(
            lambda: api.request("GET", "/api/v1/pods", token=token1)[0] == 401,
            timeout=30,
            what="the first token rejected once its pod is gone",
        )
        # the watch reconnects after an outage, and an owner is fetched: both need the new token
        api.restart()
        rs2 = deployment_chain(api, ns, "payments", "pay-5b6c7", {"app": "pay"})
        late = running_pod(api, ns, "pay-5b6c7-bbbbb", "198.19.210.4", owner_references=[rs2])

        def seen() -> bool:
            source.refresh()
            pod = source.pods().get(late)
            return pod is not None and pod.ips == ("198.19.210.4",)

        wait_for(seen, what="the pod made after the rotation, with its IP")
        assert view(source)[late] == (
            ns,
            "pay-5b6c7-bbbbb",
            ("198.19.210.4",),
            {"k8s.replicaset.name": "pay-5b6c7", "k8s.deployment.name": "payments"},
        )
        assert set(view(source)) == {web, solo, late}
    finally:
        source.close()


def test_a_ca_that_is_not_the_servers_is_one_line(
    kube_apiserver: ApiServer, manifest_sa: tuple[str, str], tmp_path: Path
) -> None:
    api = kube_apiserver
    other_ca = tmp_path / "other-ca.crt"
    key = tmp_path / "other-ca.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subprocess.run(
        ["openssl", "req", "-x509", *ec, "-keyout", str(key), "-out", str(other_ca), "-subj", "/CN=another-ca"],
        check=True,
        capture_output=True,
    )
    token, _ = bound_token(api, manifest_sa, f"holder-{secrets.token_hex(3)}")
    sa = ServiceAccountDir(tmp_path / "serviceaccount", token, other_ca, manifest_sa[0])
    desc = f"the in-cluster service account token {sa.token_file}"
    target = kube_source.ApiTarget(True, None, desc)
    with pytest.raises(ConfigError) as e:
        kube.open_source(target, NODE, env=in_cluster_env(api), token_file=sa.token_file, ca_file=sa.ca_file)
    assert str(e.value) == (
        f"Kubernetes API at {api.url}: TLS certificate verification failed; expected the server's certificate "
        f"authority in {desc}"
    )


def test_in_cluster_source_never_imports_kubernetes(
    kube_apiserver: ApiServer, manifest_sa: tuple[str, str], ns: str, tmp_path: Path
) -> None:
    """In a fresh interpreter: the agent's modules and its in-cluster source, having listed
    the node's pods from the real API, and the official client never imported."""
    api = kube_apiserver
    token, _ = bound_token(api, manifest_sa, f"holder-{secrets.token_hex(3)}")
    sa = ServiceAccountDir(tmp_path / "serviceaccount", token, api.ca_file, manifest_sa[0])
    uid = running_pod(api, ns, "solo", "198.19.211.1")
    code = f"""
import json, sys
from pathlib import Path
import otel_podnet.cli, otel_podnet.run, otel_podnet.agent
from otel_podnet import kube, kube_source
env = {json.dumps(in_cluster_env(api))}
target = kube_source.ApiTarget(True, None, "in-cluster")
src = kube.open_source(target, {NODE!r}, env=env, token_file=Path({str(sa.token_file)!r}),
                       ca_file=Path({str(sa.ca_file)!r}))
src.start_peer_directory(wait=30)
src.refresh()
print(json.dumps(sorted(src.pods())))
src.close()
print(json.dumps(sorted(m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes."))))
"""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo, check=False
    )
    assert out.returncode == 0, out.stderr
    pods, modules = out.stdout.splitlines()
    assert json.loads(pods) == [uid] and json.loads(modules) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, a mount namespace)")
def test_the_agent_in_cluster_exports_the_exact_pods(
    kube_apiserver: ApiServer, manifest_sa: tuple[str, str], ns: str, otelcol: Path, tmp_path: Path
) -> None:
    """The real ``otel-podnet run`` with no kubeconfig: the token and CA at the pod's path,
    KUBERNETES_SERVICE_HOST/PORT set; the Collector gets exactly the node's pods, named and
    with their workloads."""
    api = kube_apiserver
    token, _ = bound_token(api, manifest_sa, f"holder-{secrets.token_hex(3)}")
    sa = ServiceAccountDir(tmp_path / "serviceaccount", token, api.ca_file, manifest_sa[0])
    rs = deployment_chain(api, ns, "checkout", "co-7c9d8", {"app": "co"})
    web = running_pod(api, ns, "co-7c9d8-aaaaa", "198.19.212.1", owner_references=[rs])
    solo = running_pod(api, ns, "solo", "198.19.212.2")
    running_pod(api, ns, "elsewhere", "198.19.212.3", node=OTHER)
    with gateway(otelcol, tmp_path / "col") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint}
        with agent_in_cluster(api, sa.path, NODE, env, ["--interval", "0.5"]) as proc:
            late = running_pod(api, ns, "late", "198.19.212.4")  # seen through the watch

            def named() -> dict[str, tuple[str, str, str | None]]:
                return {
                    uid: (res["k8s.namespace.name"], res["k8s.pod.name"], res.get("k8s.deployment.name"))
                    for uid, (res, _) in exported(col.file).items()
                    if "k8s.pod.name" in res  # pods known by cgroup only are other tests' simulated pods
                }

            want = {
                web: (ns, "co-7c9d8-aaaaa", "checkout"),
                solo: (ns, "solo", None),
                late: (ns, "late", None),
            }
            wait_for(lambda: named() == want, what="exactly the node's three pods exported")
            proc.terminate()
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "in-cluster config" in err and f"Kubernetes API at {api.url}: 2 pods on node {NODE}" in err
    assert "Forbidden" not in err and "Traceback" not in err
