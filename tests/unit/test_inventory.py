"""The --pods-file PodList: YAML and JSON as kubectl writes them, skips, errors, reloads."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from otel_podnet import inventory
from otel_podnet.inventory import InventoryError, PodsFileSource, SkipWarnings, parse_pod_list

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def fresh_skip_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the first warning of each skipped pod (they are rate-limited)."""
    monkeypatch.setattr(inventory, "_skips", SkipWarnings(logging.getLogger("otel_podnet.inventory")))


def pod(name: str, uid: str, node: str = "n1", **status: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": uid,
            "labels": {"pod-template-hash": "5d8f9c7b6"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f9c7b6", "controller": True}],
        },
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.5",
            "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
            **status,
        },
    }


def pod_list(*items: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "PodList", "items": list(items)}


def test_yaml_and_json_give_the_same_pods() -> None:
    doc = pod_list(pod("web-1", "u1"))
    a = parse_pod_list(yaml.safe_dump(doc), "f")
    b = parse_pod_list(json.dumps(doc), "f")
    assert a == b
    p = a[0]
    assert (p.uid, p.name, p.namespace, p.ips) == ("u1", "web-1", "shop", ("10.1.0.5", "fd00::5"))
    assert p.workload == {"k8s.replicaset.name": "web-5d8f9c7b6", "k8s.deployment.name": "web"}


def test_pods_lacking_what_is_needed_are_skipped_by_name(caplog: pytest.LogCaptureFixture) -> None:
    broken = pod("nameless-uid", "")
    with caplog.at_level(logging.WARNING):
        pods = parse_pod_list(yaml.safe_dump(pod_list(pod("ok", "u1"), broken, "junk")), "pods.yaml")
    assert [p.name for p in pods] == ["ok"]
    assert "shop/nameless-uid" in caplog.text and "metadata.uid" in caplog.text
    assert "pods.yaml: 1 item(s) that are not Pods skipped (str x1)" in caplog.text


@pytest.mark.parametrize(
    ("text", "match"),
    [("kind: ConfigMap\n", "'ConfigMap' is not a PodList"), ("[1, 2]", "not a PodList"), ("{bad", "not YAML or JSON")],
)
def test_not_a_pod_list(text: str, match: str) -> None:
    with pytest.raises(InventoryError, match=match):
        parse_pod_list(text, "pods.yaml")


def test_fallback_ips_only_for_live_pods_not_host_network() -> None:
    running = parse_pod_list(yaml.safe_dump(pod_list(pod("a", "u1"))), "f")[0]
    done = parse_pod_list(yaml.safe_dump(pod_list(pod("b", "u2", phase="Succeeded"))), "f")[0]
    hn = pod("c", "u3")
    hn["spec"] = {"nodeName": "n1", "hostNetwork": True}
    host = parse_pod_list(yaml.safe_dump(pod_list(hn)), "f")[0]
    assert running.ips_for_fallback == ("10.1.0.5", "fd00::5")
    assert done.ips_for_fallback == host.ips_for_fallback == ()


def test_file_source_filters_node_and_reloads(tmp_path: Path) -> None:
    f = tmp_path / "pods.yaml"
    f.write_text(yaml.safe_dump(pod_list(pod("a", "u1"), pod("other-node", "u9", node="n2"))))
    src = PodsFileSource(f, "n1")
    assert src.refresh() is True and set(src.pods()) == {"u1"}
    assert src.refresh() is False
    f.write_text(yaml.safe_dump(pod_list(pod("a", "u1"), pod("b", "u2"))))
    os.utime(f, ns=(1, 1))
    assert src.refresh() is True and set(src.pods()) == {"u1", "u2"}
    f.write_text("kind: Nope\n")  # a later bad write keeps the last good view
    os.utime(f, ns=(2, 2))
    assert src.refresh() is False and set(src.pods()) == {"u1", "u2"}


# -- what kubectl writes, and the other shapes of a pods file ---------------------------------


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("name", ["kubectl-get-pods.yaml", "kubectl-get-pods.json"])
def test_kubectl_output_as_written(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Files written by real kubectl (see fixtures/README.md): ``kind: List`` of Pods."""
    text = (FIXTURES / name).read_text()
    assert ("kind: List" in text) if name.endswith(".yaml") else ('"kind": "List"' in text)
    with caplog.at_level(logging.WARNING):
        pods = sorted(parse_pod_list(text, name), key=lambda p: p.name)
    assert warnings(caplog) == []
    assert [(p.namespace, p.name, p.node_name, p.phase, p.ips) for p in pods] == [
        ("shop", "db-0", "node-a", "Running", ("10.244.1.9",)),
        ("shop", "web-5d8f9c7b6-x2x4q", "node-a", "Running", ("10.244.1.7", "fd00:10:244:1::7")),
    ]
    web = pods[1]
    assert web.labels == {"app.kubernetes.io/name": "web", "pod-template-hash": "5d8f9c7b6"}
    assert web.annotations == {"resource.opentelemetry.io/service.version": "1.4.2"}
    assert web.workload == {"k8s.replicaset.name": "web-5d8f9c7b6", "k8s.deployment.name": "web"}
    assert pods[0].workload == {"k8s.statefulset.name": "db"}
    assert len({p.uid for p in pods}) == 2 and all(len(p.uid) == 36 for p in pods)


def test_yaml_and_json_from_kubectl_agree() -> None:
    a = parse_pod_list((FIXTURES / "kubectl-get-pods.yaml").read_text(), "y")
    b = parse_pod_list((FIXTURES / "kubectl-get-pods.json").read_text(), "j")
    assert sorted(a, key=lambda p: p.uid) == sorted(b, key=lambda p: p.uid)


def test_pod_list_single_pod_and_multi_document(caplog: pytest.LogCaptureFixture) -> None:
    api_list = pod_list(pod("a", "u1"))  # the API's PodList: items without a kind
    for item in api_list["items"]:  # type: ignore[attr-defined]
        del item["apiVersion"], item["kind"]
    assert [p.uid for p in parse_pod_list(json.dumps(api_list), "f")] == ["u1"]
    assert [p.uid for p in parse_pod_list(yaml.safe_dump(pod("b", "u2")), "f")] == ["u2"]
    assert [p.uid for p in parse_pod_list(json.dumps(pod("b", "u2")), "f")] == ["u2"]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"}}
    kubectl_list = {"apiVersion": "v1", "kind": "List", "items": [pod("c", "u3"), service]}
    stream = yaml.safe_dump_all([pod("b", "u2"), kubectl_list, config, None, api_list])
    with caplog.at_level(logging.WARNING):
        pods = parse_pod_list(stream, "pods.yaml")
    assert [p.uid for p in pods] == ["u2", "u3", "u1"]
    assert warnings(caplog) == ["pods.yaml: 2 item(s) that are not Pods skipped (ConfigMap x1, Service x1)"]


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: v1\nkind: ConfigMap\n",
        yaml.safe_dump_all([{"kind": "ConfigMap"}, {"kind": "Secret"}]),
        json.dumps({"kind": "ConfigMap"}),
    ],
)
def test_nothing_that_holds_pods_is_refused(text: str) -> None:
    with pytest.raises(InventoryError) as err:
        parse_pod_list(text, "pods.yaml")
    assert str(err.value) == (
        "pods.yaml: kind 'ConfigMap' is not a PodList, List or Pod; "
        "expected `kubectl get pods -o yaml` or `-o json` output"
    )


# -- pods with fields of the wrong type: skipped by name and field, the others kept -----------


def broken(path: str, value: object) -> dict[str, object]:
    p = pod("bad", "u-bad")
    where: dict[str, object] = p
    *parents, last = path.split(".")
    for k in parents:
        where = where[k]  # type: ignore[assignment]
    where[last] = value
    return p


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("metadata.labels", ["a", "b"], "metadata.labels: expected a mapping, got list"),
        ("metadata.labels", {"app": 5}, "metadata.labels['app']: expected a string, got int"),
        ("metadata.annotations", "x=y", "metadata.annotations: expected a mapping, got str"),
        (
            "metadata.annotations",
            {"resource.opentelemetry.io/service.name": ["x"]},
            "metadata.annotations['resource.opentelemetry.io/service.name']: expected a string, got list",
        ),
        ("status.podIP", "10.1.0.999", "status.podIP: '10.1.0.999' is not an IP address"),
        ("status.podIPs", [{"ip": "not-an-ip"}], "status.podIPs[0].ip: 'not-an-ip' is not an IP address"),
        ("status.podIPs", "10.1.0.5", "status.podIPs: expected a list, got str"),
        ("spec.hostNetwork", "false", "spec.hostNetwork: expected true or false, got 'false'"),
        ("spec.nodeName", 7, "spec.nodeName: expected a string, got int"),
        ("status.phase", {"x": 1}, "status.phase: expected a string, got dict"),
        ("metadata.ownerReferences", {"kind": "ReplicaSet"}, "metadata.ownerReferences: expected a list, got dict"),
        ("metadata.name", 12, "metadata.name: expected a string, got int"),
        ("spec", "x", "pod.spec: expected a mapping, got str"),
    ],
)
def test_unusable_pod_skipped_naming_the_field(
    path: str, value: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    text = yaml.safe_dump(pod_list(pod("ok", "u1"), broken(path, value), pod("ok2", "u2")))
    with caplog.at_level(logging.WARNING):
        pods = parse_pod_list(text, "pods.yaml")
    assert [p.name for p in pods] == ["ok", "ok2"]
    who = "shop/12" if path == "metadata.name" else "shop/bad"
    assert warnings(caplog) == [f"pods.yaml: pod {who} skipped: {reason}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the same pod again (a rewrite): rate-limited
        assert [p.name for p in parse_pod_list(text, "pods.yaml")] == ["ok", "ok2"]
    assert warnings(caplog) == []


def test_host_network_false_is_false() -> None:
    p = pod("a", "u1")
    p["spec"] = {"nodeName": "n1", "hostNetwork": False}
    got = parse_pod_list(yaml.safe_dump(pod_list(p)), "f")[0]
    assert got.host_network is False and got.ips_for_fallback == ("10.1.0.5", "fd00::5")


def test_file_source_keeps_counting_the_others(tmp_path: Path) -> None:
    f = tmp_path / "pods.yaml"
    f.write_text(yaml.safe_dump(pod_list(pod("a", "u1"), broken("status.podIP", "999.1.1.1"))))
    src = PodsFileSource(f, "n1")
    assert src.refresh() is True and set(src.pods()) == {"u1"}


# -- only the annotations that are used are kept ---------------------------------------------


def test_only_resource_annotations_are_kept() -> None:
    p = pod("a", "u1")
    p["metadata"]["annotations"] = {  # type: ignore[index]
        "kubectl.kubernetes.io/last-applied-configuration": "x" * 100_000,
        "prometheus.io/scrape": "true",
        "resource.opentelemetry.io/service.name": "storefront",
        "resource.opentelemetry.io/service.version": "2.0",
    }
    got = parse_pod_list(yaml.safe_dump(pod_list(p)), "f")[0]
    assert dict(got.annotations) == {
        "resource.opentelemetry.io/service.name": "storefront",
        "resource.opentelemetry.io/service.version": "2.0",
    }


def test_every_pod_source_has_the_changed_event(tmp_path: Path) -> None:
    """The agent waits on ``source.changed`` (part of the PodSource Protocol, no getattr)."""
    import threading

    from otel_podnet.inventory import NoPods, PodSource

    assert "changed" in PodSource.__annotations__
    f = tmp_path / "pods.yaml"
    f.write_text(yaml.safe_dump(pod_list()))
    for src in (PodsFileSource(f, "n1"), NoPods()):
        assert isinstance(src.changed, threading.Event) and not src.changed.is_set()
