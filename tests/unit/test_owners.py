"""Owner resolution lives in otel_podnet.owners, apart from the Kubernetes client: a pod's
workload from its owner, cached lookups, fallbacks. Only otel_podnet/kube.py imports
``kubernetes``."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from otel_podnet.owners import OwnerLookupError, OwnerResolver

PACKAGE = Path(__file__).resolve().parents[2] / "otel_podnet"


def test_only_kube_py_imports_kubernetes() -> None:
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == "kubernetes" or n.startswith("kubernetes.") for n in names):
                importers.append(path.relative_to(PACKAGE).as_posix())
    assert sorted(set(importers)) == ["kube.py"]
    # and resolving owners loads no Kubernetes client at all
    code = "import sys, otel_podnet.owners; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False"


def owned_by(kind: str, name: str) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [{"kind": kind, "name": name, "controller": True}]}}


def test_resolver_caches_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str, str]] = []
    answers: dict[tuple[str, str, str], Mapping[str, Any] | OwnerLookupError] = {
        ("ReplicaSet", "shop", "web-5d8"): owned_by("Deployment", "web"),
        ("Job", "shop", "nightly-1"): owned_by("CronJob", "nightly"),
        ("ReplicaSet", "shop", "x-1f"): OwnerLookupError(403, "403 Forbidden", "cannot get replicasets"),
        ("ReplicaSet", "shop", "y-2e"): OwnerLookupError(None, "connection refused"),
    }

    def fetch(kind: str, namespace: str, name: str) -> Mapping[str, Any]:
        calls.append((kind, namespace, name))
        got = answers[(kind, namespace, name)]
        if isinstance(got, OwnerLookupError):
            raise got
        return got

    r = OwnerResolver(fetch, logging.getLogger("test.owners"), "deploy/otel-podnet.yaml")
    with caplog.at_level(logging.WARNING, logger="test.owners"):
        for _ in range(2):
            assert r.workload("shop", ("ReplicaSet", "web-5d8"), {}) == {
                "k8s.replicaset.name": "web-5d8",
                "k8s.deployment.name": "web",
            }
            assert r.workload("shop", ("Job", "nightly-1"), {}) == {
                "k8s.job.name": "nightly-1",
                "k8s.cronjob.name": "nightly",
            }
            assert r.workload("shop", ("StatefulSet", "db"), {}) == {"k8s.statefulset.name": "db"}
            assert r.workload("shop", ("ReplicaSet", "x-1f"), {"pod-template-hash": "1f"}) == {
                "k8s.replicaset.name": "x-1f",
                "k8s.deployment.name": "x",
            }
        assert r.workload("shop", ("ReplicaSet", "y-2e"), {"pod-template-hash": "2e"}) == {
            "k8s.replicaset.name": "y-2e",
            "k8s.deployment.name": "y",
        }
        r.workload("shop", ("ReplicaSet", "y-2e"), {})  # paused: no lookup
    assert calls == [
        ("ReplicaSet", "shop", "web-5d8"),
        ("Job", "shop", "nightly-1"),
        ("ReplicaSet", "shop", "x-1f"),
        ("ReplicaSet", "shop", "y-2e"),
    ]
    assert [rec.getMessage() for rec in caplog.records] == [
        "cannot get replicasets.apps (403 Forbidden: cannot get replicasets): workload names of pods owned by a "
        "ReplicaSet come from their labels only; grant get on replicasets.apps (deploy/otel-podnet.yaml)",
        "cannot resolve the workload of ReplicaSet y-2e (connection refused); using the pod's labels for now",
    ]
    r.prune({("shop", "ReplicaSet", "web-5d8")}, slack=0)
    assert list(r.cache) == [("shop", "ReplicaSet", "web-5d8")]
