"""The e2e Kubernetes control plane itself: a real kube-apiserver + etcd.

The first run builds kube-apiserver, kubectl, etcd and helm from pinned Go
modules (several minutes on two cores, see tests/e2e/infra/build-kube.sh);
later runs reuse the cached binaries.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apiserver import ADMIN_USER, ApiError, ApiServer, run_apiserver

pytestmark = pytest.mark.e2e

NS = "infra-test"
CONTAINER_ID = "containerd://" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with run_apiserver(tmp_path_factory.mktemp("kube")) as server:
        server.create_namespace(NS)
        yield server


def test_admin_identity_and_kubeconfig(api: ApiServer) -> None:
    review = api.call(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    user = review["status"]["userInfo"]
    assert user["username"] == ADMIN_USER
    assert "system:masters" in user["groups"]
    assert api.url.startswith("https://127.0.0.1:")
    assert api.ca_file.is_file()
    version = api.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.' in version
    assert api.kubectl("get", "namespace", NS, "-o", "name").stdout.strip() == f"namespace/{NS}"


def test_pod_on_node_with_status(api: ApiServer) -> None:
    pod = api.create_pod(NS, "web-0", node_name="node-a", labels={"app": "web"})
    assert pod["spec"]["nodeName"] == "node-a"
    assert "podIP" not in pod.get("status", {})

    api.set_pod_status(
        NS,
        "web-0",
        pod_ip="10.244.1.7",
        pod_ips=["10.244.1.7", "fd00:10:244:1::7"],
        container_ids={"app": CONTAINER_ID},
    )
    status = api.get_pod(NS, "web-0")["status"]
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.244.1.7"
    assert [p["ip"] for p in status["podIPs"]] == ["10.244.1.7", "fd00:10:244:1::7"]
    assert status["containerStatuses"][0]["containerID"] == CONTAINER_ID
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True"

    # The query a node agent makes: only the pods bound to its node.
    api.create_pod(NS, "other-0", node_name="node-b")
    listed = api.call("GET", "/api/v1/pods", query={"fieldSelector": "spec.nodeName=node-a"})
    assert [p["metadata"]["name"] for p in listed["items"]] == ["web-0"]
    jsonpath = api.kubectl("get", "pod", "-n", NS, "web-0", "-o", "jsonpath={.status.podIP}")
    assert jsonpath.stdout == "10.244.1.7"

    api.delete_pod(NS, "other-0")
    with pytest.raises(ApiError) as err:
        api.get_pod(NS, "other-0")
    assert err.value.status == 404


def test_service_account_token(api: ApiServer) -> None:
    api.create_service_account(NS, "reader")
    token = api.create_sa_token(NS, "reader")
    review = api.call(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{NS}:reader"
    # RBAC is on: a fresh service account may not list pods.
    status, _ = api.request("GET", f"/api/v1/namespaces/{NS}/pods", token=token)
    assert status == 403
    assert not api.can_i(token, "list", "pods", namespace=NS)

    kubeconfig = api.kubeconfig_for_token(token, namespace=NS)
    denied = api.kubectl("get", "pods", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    status, _ = api.request("GET", f"/api/v1/namespaces/{NS}/pods", token="not-a-token")
    assert status == 401


def test_stop_and_restart_keeps_state(api: ApiServer) -> None:
    api.create_pod(NS, "survivor", node_name="node-a")
    api.create_service_account(NS, "survivor")
    token = api.create_sa_token(NS, "survivor")
    port = api.port

    api.stop()
    assert not api.running()
    with pytest.raises(urllib.error.URLError):
        api.request("GET", "/readyz", timeout=2)

    api.start()
    assert api.running()
    assert api.port == port
    assert api.get_pod(NS, "survivor")["spec"]["nodeName"] == "node-a"
    # Tokens signed before the restart still authenticate.
    status, _ = api.request("GET", "/version", token=token)
    assert status == 200

    api.restart(down_seconds=1.0)
    assert api.get_pod(NS, "survivor")["metadata"]["name"] == "survivor"


def test_workdir_layout(api: ApiServer) -> None:
    assert api.admin_kubeconfig.is_file()
    assert (api.workdir / "logs" / "kube-apiserver.log").stat().st_size > 0
    assert (api.workdir / "logs" / "etcd.log").exists()
    assert isinstance(api.bin_dir, Path)
    assert (api.bin_dir / "helm").is_file()
