"""The agent in-cluster against the e2e kube-apiserver (tests/e2e/apiserver.py): the
DaemonSet's service account and RBAC from deploy/otel-podnet.yaml, its token minted by the
TokenRequest API (as the kubelet does for a projected volume), a service account directory
laid out as the kubelet writes it (``..data`` swapped atomically on rotation), and the real
``otel-podnet run`` process finding it where a pod has it.

A pod sees its token at /var/run/secrets/kubernetes.io/serviceaccount; so does the agent
here: it runs in a mount namespace of its own (``unshare --mount``) where a small tmpfs over
/run holds a copy of the directory. Nothing of the host's /run changes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .apiserver import ApiServer
from .collector import free_port

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "otel-podnet.yaml"
POD_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def grant_manifest_rbac(api: ApiServer) -> tuple[str, str, list[str]]:
    """The manifest's Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding;
    returns the service account's (namespace, name) and the paths created (to delete)."""
    objs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    made: list[str] = []
    for obj in objs:
        if obj["kind"] not in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
            continue
        path = api.resource_path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))
        status, body = api.request("POST", path, obj)
        if status not in (201, 409):
            raise RuntimeError(f"POST {path}: HTTP {status}: {body}")
        made.append(f"{path}/{obj['metadata']['name']}")
    sa = next(o for o in objs if o["kind"] == "ServiceAccount")["metadata"]
    return str(sa["namespace"]), str(sa["name"]), made


def in_cluster_env(api: ApiServer) -> dict[str, str]:
    """What the kubelet puts in every pod's environment for the ``kubernetes`` Service."""
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}


class ServiceAccountDir:
    """``token``, ``ca.crt`` and ``namespace`` as the kubelet lays them out: symlinks through
    ``..data`` to a timestamped directory; :meth:`rotate` writes a new one and swaps
    ``..data`` atomically, as the kubelet does when it refreshes a bound token."""

    def __init__(self, root: Path, token: str, ca_file: Path, namespace: str) -> None:
        self.path = root
        self.path.mkdir(parents=True)
        self._ca = ca_file.read_text()
        self._namespace = namespace
        self._n = 0
        self._write(token)
        for name in ("token", "ca.crt", "namespace"):
            (self.path / name).symlink_to(f"..data/{name}")

    @property
    def token_file(self) -> Path:
        return self.path / "token"

    @property
    def ca_file(self) -> Path:
        return self.path / "ca.crt"

    def _write(self, token: str) -> None:
        self._n += 1
        data = self.path / f"..2026_11_29_00_00_{self._n:02d}.{os.getpid()}"
        data.mkdir()
        (data / "token").write_text(token)
        (data / "ca.crt").write_text(self._ca)
        (data / "namespace").write_text(self._namespace)
        tmp = self.path / "..data_tmp"
        tmp.symlink_to(data.name)
        tmp.replace(self.path / "..data")

    def rotate(self, token: str) -> None:
        self._write(token)


def in_cluster_argv(sa_dir: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` in a mount namespace of its own where ``sa_dir``'s files are at the pod's
    service account path (a 1 MiB tmpfs over /run; the agent needs nothing else there).
    ``unshare`` and the shell exec: the process started is the agent itself."""
    script = (
        "mount -t tmpfs -o size=1m,mode=0755 otel-podnet-e2e-sa /run"
        f" && mkdir -p {POD_SA_DIR}"
        f' && cp -L "$0/token" "$0/ca.crt" "$0/namespace" {POD_SA_DIR}/'
        ' && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, str(sa_dir), *argv]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:  # not listening yet, or 503 starting
        return False


@contextlib.contextmanager
def agent_in_cluster(
    api: ApiServer,
    sa_dir: Path,
    node_name: str,
    env: Mapping[str, str],
    args: Sequence[str] = (),
    cwd: Path = REPO,
    ready_timeout: float = 90.0,
) -> Iterator[subprocess.Popen[str]]:
    """``python3 -m otel_podnet run`` (the code under ``cwd``) in-cluster: no --kubeconfig,
    KUBERNETES_SERVICE_HOST/PORT pointing at ``api``, the token and CA at the pod's path.
    Yields once /readyz answers (its programs attached, its pods listed); killed after."""
    health = free_port()
    argv = [
        sys.executable,
        "-m",
        "otel_podnet",
        "run",
        "--node-name",
        node_name,
        "--health-address",
        f"127.0.0.1:{health}",
        *args,
    ]
    full_env: dict[str, Any] = {**os.environ, **env, **in_cluster_env(api), "PYTHONPATH": str(cwd)}
    full_env.pop("KUBECONFIG", None)
    full_env["HOME"] = str(sa_dir.parent)  # no ~/.kube/config: in-cluster is the only choice
    proc = subprocess.Popen(
        in_cluster_argv(sa_dir, argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(health):
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not ready after {ready_timeout:g} s")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
