"""Resident memory of the real agent process with the Kubernetes API source (issue 10:
RSS <= 60 MiB), for this tree and for others (main) side by side:

    PYTHONPATH=$PWD python3 bench/agent_rss.py --ref main

Per tree and round it starts ``python3 -m otel_podnet run`` as the DaemonSet runs it:
in-cluster (no kubeconfig; KUBERNETES_SERVICE_HOST/PORT and the manifest's ServiceAccount
token and CA at the pod's path, in a mount namespace of its own: tests/e2e/incluster.py)
against a real kube-apiserver holding ``--pods`` pods of the node (a Deployment's, through
its ReplicaSet, so owners are fetched) and as many of other nodes, exporting with the
default OTLP gRPC exporter to a real Collector, peer metrics on (the default: the cluster's
pods, Services and EndpointSlices listed and watched). Once ``--exports`` requests reached
the Collector it reads VmRSS and VmHWM (the peak) from /proc/PID/status.

``--ref REF`` adds a tree of that git revision (``git archive`` into a temporary directory,
its BPF object built there); the rounds alternate between the trees. Needs root (BPF, the
mount namespace), the e2e kube-apiserver and otelcol (tests/e2e/infra). Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.apiserver import ApiServer, run_apiserver  # noqa: E402
from tests.e2e.collector import build_otelcol  # noqa: E402
from tests.e2e.conftest import gateway  # noqa: E402
from tests.e2e.incluster import ServiceAccountDir, agent_in_cluster, grant_manifest_rbac  # noqa: E402

NODE = "bench-node"


def status_kib(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in re.findall(r"^(Vm\w+):\s+(\d+) kB", text, re.M)}


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def populate(api: ApiServer, pods: int) -> None:
    ns = "bench"
    api.create_namespace(ns)
    labels = {"app": "web"}
    spec = {
        "replicas": 0,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "x"}]}},
    }
    d = api.create_object(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns}, "spec": spec}
    )
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": d["metadata"]["uid"]}
    rs = api.create_object(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-6d5f8",
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [{**owner, "controller": True}],
            },
            "spec": spec,
        }
    )
    rs_ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d5f8", "uid": rs["metadata"]["uid"]}
    for i in range(pods):
        for node, base in ((NODE, 10), ("other-node", 20)):
            name = f"web-6d5f8-{node[:5]}{i:03d}"
            api.create_pod(ns, name, node, labels=labels, owner_references=[{**rs_ref, "controller": True}])
            api.set_pod_status(ns, name, pod_ip=f"198.18.{base + i // 250}.{i % 250 + 1}")
    api.create_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": labels, "ports": [{"port": 80}]},
        }
    )


def tree_of(ref: str, workdir: Path) -> Path:
    """``ref`` of this repository as files under ``workdir``, its BPF object built."""
    out = workdir / re.sub(r"[^\w.-]", "_", ref)
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    subprocess.run([sys.executable, str(out / "bpf" / "build.py")], check=True, capture_output=True)
    return out


def one_round(
    api: ApiServer, otelcol: Path, sa: ServiceAccountDir, tree: Path, exports: int, tmp: Path, extra: list[str]
) -> dict[str, int]:
    with gateway(otelcol, tmp / f"col-{secrets.token_hex(3)}") as col:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": col.grpc_endpoint}
        with agent_in_cluster(api, sa.path, NODE, env, ["--interval", "1", *extra], cwd=tree) as proc:
            deadline = time.monotonic() + 120
            while lines(col.file) < exports:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{lines(col.file)} exports in 120 s")
                time.sleep(0.2)
            figures = status_kib(proc.pid)
            proc.terminate()
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"agent exited {proc.returncode}: {err[-2000:]}")
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", action="append", default=[], help="another git revision to measure (repeatable)")
    p.add_argument("--pods", type=int, default=20, help="pods on the agent's node (as many on another node)")
    p.add_argument("--exports", type=int, default=5, help="OTLP requests received before reading RSS")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--agent-arg", action="append", default=[], help="more arguments of `otel-podnet run`")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("agent_rss.py: needs root (BPF, a mount namespace)")

    otelcol = build_otelcol()
    with tempfile.TemporaryDirectory(prefix="agent-rss-") as tmpdir:
        tmp = Path(tmpdir)
        trees = {ref: tree_of(ref, tmp) for ref in args.ref}
        trees["this tree"] = REPO
        with run_apiserver(tmp / "kube") as api:
            sa_ns, sa_name, _ = grant_manifest_rbac(api)
            token = api.create_sa_token(sa_ns, sa_name)
            sa = ServiceAccountDir(tmp / "serviceaccount", token, api.ca_file, sa_ns)
            populate(api, args.pods)
            extra = " ".join(args.agent_arg) or "none"
            print(
                f"{args.pods} pods on the node, {args.pods} on another, 1 Service; in-cluster, OTLP gRPC to a real "
                f"Collector, interval 1 s, read after {args.exports} exports; more arguments: {extra}",
                flush=True,
            )
            got: dict[str, list[dict[str, int]]] = {name: [] for name in trees}
            for r in range(args.rounds):
                for name, tree in trees.items():
                    f = one_round(api, otelcol, sa, tree, args.exports, tmp, args.agent_arg)
                    got[name].append(f)
                    rss, hwm = f["VmRSS"] / 1024, f["VmHWM"] / 1024
                    print(f"round {r + 1} {name:<12} VmRSS {rss:5.1f} MiB  VmHWM {hwm:5.1f} MiB", flush=True)
    print("medians:")
    for name, rounds in got.items():
        rss = statistics.median(f["VmRSS"] for f in rounds) / 1024
        hwm = statistics.median(f["VmHWM"] for f in rounds) / 1024
        print(f"  {name:<12} VmRSS {rss:5.1f} MiB  VmHWM {hwm:5.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
