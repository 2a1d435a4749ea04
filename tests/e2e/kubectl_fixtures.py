"""Pods files exactly as ``kubectl get pods -o yaml`` and ``-o json`` write them, from the real
kubectl against the real kube-apiserver (tests/e2e/apiserver.py, both built from the pinned
modules by tests/e2e/infra/build-kube.sh).

``python3 -m tests.e2e.kubectl_fixtures`` (as root, from the repository root) starts an API
server in a temporary directory, creates the pods below with ``kubectl apply`` (which also
adds its last-applied-configuration annotation, as on a real cluster), sets their status as
a kubelet would, and writes tests/unit/fixtures/kubectl-get-pods.{yaml,json}, which the unit
tests read without an API server. tests/e2e/test_kube.py checks that fresh output parses to
the same pods.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .apiserver import ApiServer, run_apiserver

NAMESPACE = "shop"
NODE = "node-a"
OUT = Path(__file__).parent.parent / "unit" / "fixtures"


def pods_manifest() -> str:
    def pod(
        n: int, name: str, labels: dict[str, str], owner: tuple[str, str, str], annotations: dict[str, str]
    ) -> object:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": owner[0],
                        "kind": owner[1],
                        "name": owner[2],
                        "uid": f"00000000-0000-4000-8000-{n:012d}",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "nodeName": NODE,
                "automountServiceAccountToken": False,
                "containers": [{"name": "app", "image": "registry.invalid/otel-podnet-e2e/app:1"}],
            },
        }

    items = [
        pod(
            1,
            "web-5d8f9c7b6-x2x4q",
            {"app.kubernetes.io/name": "web", "pod-template-hash": "5d8f9c7b6"},
            ("apps/v1", "ReplicaSet", "web-5d8f9c7b6"),
            {"resource.opentelemetry.io/service.version": "1.4.2", "prometheus.io/scrape": "true"},
        ),
        pod(2, "db-0", {"app": "db"}, ("apps/v1", "StatefulSet", "db"), {}),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def create_pods(api: ApiServer) -> None:
    api.create_namespace(NAMESPACE)
    api.kubectl("apply", "-f", "-", input_text=pods_manifest())
    web_ips = ["10.244.1.7", "fd00:10:244:1::7"]
    api.set_pod_status(NAMESPACE, "web-5d8f9c7b6-x2x4q", pod_ip=web_ips[0], pod_ips=web_ips)
    api.set_pod_status(NAMESPACE, "db-0", pod_ip="10.244.1.9")


def kubectl_get_pods(api: ApiServer, output: str) -> str:
    return api.kubectl("get", "pods", "-n", NAMESPACE, "-o", output).stdout


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="podnet-kubectl-") as tmp, run_apiserver(Path(tmp)) as api:
        create_pods(api)
        for output in ("yaml", "json"):
            (OUT / f"kubectl-get-pods.{output}").write_text(kubectl_get_pods(api, output))


if __name__ == "__main__":
    main()
