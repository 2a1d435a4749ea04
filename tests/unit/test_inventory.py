"""The --pods-file PodList: YAML and JSON as kubectl writes them, skips, errors, reloads."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from otel_podnet.inventory import InventoryError, PodsFileSource, parse_pod_list


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
    assert "items[2] is not a Pod" in caplog.text


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
