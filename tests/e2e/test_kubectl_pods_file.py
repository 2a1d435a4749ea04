"""``--pods-file`` takes what the real kubectl writes: ``kubectl get pods -o yaml`` and
``-o json`` (a ``kind: List``), fresh from a real kube-apiserver, give the same pods as the
fixtures the unit tests read (tests/unit/fixtures, written by tests/e2e/kubectl_fixtures.py)."""

from __future__ import annotations

import dataclasses

import pytest

from otel_podnet.inventory import parse_pod_list

from .apiserver import ApiServer
from .kubectl_fixtures import OUT, create_pods, kubectl_get_pods


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_kubectl_get_pods_is_a_pods_file(kube_apiserver: ApiServer, output: str) -> None:
    if not kube_apiserver.kubectl("get", "namespace", "shop", check=False).returncode == 0:
        create_pods(kube_apiserver)
    text = kubectl_get_pods(kube_apiserver, output)
    assert (
        (text.startswith("apiVersion: v1\nitems:\n") and "\nkind: List\n" in text)
        if output == "yaml"
        else ('"kind": "List"' in text)
    )
    fresh = parse_pod_list(text, f"kubectl -o {output}")
    fixture = parse_pod_list((OUT / f"kubectl-get-pods.{output}").read_text(), "fixture")

    def comparable(pods: list) -> list:  # type: ignore[type-arg]
        return sorted((dataclasses.replace(p, uid="") for p in pods), key=lambda p: p.name)

    assert [p.name for p in comparable(fresh)] == ["db-0", "web-5d8f9c7b6-x2x4q"]
    assert comparable(fresh) == comparable(fixture)
