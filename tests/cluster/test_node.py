"""The node itself: a pod the scheduler placed, the kubelet ran under containerd and runc,
in the cgroups the agent reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .conftest import WORKLOAD_IMAGE
from .node import CGROUP_ROOT, NODE_NAME, POD_CIDR, Node
from .workloads import pod_pids, wait_phase


def test_pod_runs_under_the_kubelet_in_cgroup_v2(cluster: Node) -> None:
    ns = "node-smoke"
    cluster.kubectl("create", "namespace", ns)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": ns},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": WORKLOAD_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
        got = wait_phase(cluster, ns, "sleeper", "Running")
        assert got["spec"]["nodeName"] == NODE_NAME
        assert got["status"]["podIP"].startswith(POD_CIDR.rsplit(".", 1)[0] + ".")
        uid = got["metadata"]["uid"]
        (pid,) = pod_pids(cluster, got)
        # The kubelet's cgroupfs layout, in the cgroup v2 hierarchy as in every v1 one.
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        v2 = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        parts = v2.strip("/").split("/")
        assert parts[:3] == [CGROUP_ROOT, "kubepods", "besteffort"], v2
        assert parts[3] == f"pod{uid}", v2
        assert len(parts) == 5, v2  # the container's own cgroup below the pod's
        assert os.path.isdir(cluster.cgroup2 / v2.lstrip("/"))
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s")
