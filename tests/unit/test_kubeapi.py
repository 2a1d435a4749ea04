"""The API transport's configuration without an API server: the in-cluster config from a
service account tree the test builds (token, CA, environment), the token's rotation, the
errors and their words (as the official client's loader gave them), a kubeconfig mapped
through the client's loader, and the in-cluster path never importing ``kubernetes``."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from otel_podnet import kube
from otel_podnet.kube_source import ApiTarget
from otel_podnet.kubeapi import ApiConfig, KubeApi, TokenFile, in_cluster_config
from otel_podnet.settings import ConfigError, NotReady

REPO = Path(__file__).resolve().parents[2]
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def sa_tree(root: Path, token: str = "tok-1", ca: str = CA_PEM) -> tuple[Path, Path]:
    """A service account directory as the kubelet mounts it: ``..data`` a symlink to a
    timestamped directory, ``token`` and ``ca.crt`` symlinks through it."""
    sa = root / "serviceaccount"
    sa.mkdir(parents=True)
    data = sa / "..2026_11_29_01_00_00.1"
    data.mkdir()
    (data / "token").write_text(token)
    (data / "ca.crt").write_text(ca)
    (sa / "..data").symlink_to(data.name)
    for name in ("token", "ca.crt"):
        (sa / name).symlink_to(f"..data/{name}")
    return sa / "token", sa / "ca.crt"


def rotate(token_file: Path, token: str, n: int) -> None:
    """The kubelet's atomic update: a new timestamped directory, ``..data`` swapped to it."""
    sa = token_file.parent
    data = sa / f"..2026_11_29_01_0{n}_00.{n}"
    data.mkdir()
    (data / "token").write_text(token)
    (data / "ca.crt").write_text((sa / "ca.crt").read_text())
    tmp = sa / "..data_tmp"
    tmp.symlink_to(data.name)
    tmp.replace(sa / "..data")


ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster_config_from_the_service_account_files(tmp_path: Path) -> None:
    token, ca = sa_tree(tmp_path)
    cfg = in_cluster_config(ENV, token, ca)
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ca_file == str(ca) and cfg.verify and cfg.cert_file is None and cfg.proxy is None
    assert cfg.authorization() == "Bearer tok-1"
    v6 = in_cluster_config({"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"}, token, ca)
    assert v6.host == "https://[fd00:10:96::1]:6443"
    assert KubeApi(v6).url("/api/v1/pods", {"watch": True, "limit": 5, "fieldSelector": "spec.nodeName=n1"}) == (
        "https://[fd00:10:96::1]:6443/api/v1/pods?watch=true&limit=5&fieldSelector=spec.nodeName%3Dn1"
    )


def test_a_rotated_token_is_used_from_the_next_request(tmp_path: Path) -> None:
    token, ca = sa_tree(tmp_path)
    cfg = in_cluster_config(ENV, token, ca)
    assert cfg.authorization() == "Bearer tok-1"
    rotate(token, "tok-2", 1)
    assert cfg.authorization() == "Bearer tok-2"
    rotate(token, "tok-3-longer", 2)
    assert cfg.authorization() == "Bearer tok-3-longer"


def test_a_token_rewritten_in_place_is_read_again_within_a_minute(tmp_path: Path) -> None:
    """Same inode, size and modification time (a coarse file system): the minute's re-read."""
    path = tmp_path / "token"
    path.write_text("aaaa")
    now = [1000.0]
    tokens = TokenFile(path, max_age=60.0, clock=lambda: now[0])
    tokens.load()
    st = path.stat()
    with path.open("r+") as f:
        f.write("bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino and tokens.token() == "aaaa"
    now[0] += 59.0
    assert tokens.token() == "aaaa"
    now[0] += 1.0
    assert tokens.token() == "bbbb"
    # gone for a moment (mid-rotation): the last token stays
    path.unlink()
    now[0] += 120.0
    assert tokens.authorization() == "Bearer bbbb"


@pytest.mark.parametrize(
    ("env", "files", "detail"),
    [
        ({}, "both", "Service host/port is not set."),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "both", "Service host/port is not set."),
        (
            {"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "443"},
            "both",
            "Service host/port is set but empty.",
        ),
        (ENV, "no token", "Service token file does not exist."),
        (ENV, "empty token", "Token file exists but empty."),
        (ENV, "no ca", "Service certification file does not exist."),
        (ENV, "empty ca", "Cert file exists but empty."),
    ],
)
def test_incomplete_in_cluster_config_is_one_line_as_before(
    tmp_path: Path, env: dict[str, str], files: str, detail: str
) -> None:
    token, ca = sa_tree(tmp_path, token="" if files == "empty token" else "t", ca="" if files == "empty ca" else CA_PEM)
    if files == "no token":
        token = token.with_name("missing")
    if files == "no ca":
        ca = ca.with_name("missing")
    desc = f"the in-cluster service account token {token}"
    with pytest.raises(ConfigError) as e:
        kube.load_configuration(ApiTarget(True, None, desc), env=env, token_file=token, ca_file=ca)
    assert str(e.value) == f"{desc}: {detail}; expected a usable Kubernetes config (a server and credentials)"


def test_a_bad_service_host_is_unreachable_as_before(tmp_path: Path) -> None:
    token, ca = sa_tree(tmp_path)
    target = ApiTarget(True, None, f"the in-cluster service account token {token}")
    env = {"KUBERNETES_SERVICE_HOST": "bad host", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(NotReady) as e:
        kube.open_source(target, "n1", first_list_timeout=0.5, env=env, token_file=token, ca_file=ca)
    assert str(e.value) == (
        "Kubernetes API at https://bad host:443 unreachable: Failed to parse: Host 'bad host' contains invalid "
        "character ' ' (retried for 0.5 s)"
    )


def test_a_kubeconfig_is_loaded_by_the_official_loader(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://api.example.test:6443",
                            "certificate-authority-data": base64.b64encode(CA_PEM.encode()).decode(),
                            "tls-server-name": "kubernetes",
                            "proxy-url": "http://127.0.0.1:3128",
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "kc-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    cfg = kube.load_configuration(ApiTarget(False, kubeconfig, f"kubeconfig {kubeconfig}"))
    assert isinstance(cfg, ApiConfig)
    assert cfg.host == "https://api.example.test:6443" and cfg.verify
    assert cfg.authorization() == "Bearer kc-token"
    assert cfg.ca_file is not None and Path(cfg.ca_file).read_text() == CA_PEM
    assert cfg.tls_server_name == "kubernetes" and cfg.proxy == "http://127.0.0.1:3128"
    assert cfg.cert_file is None and cfg.key_file is None


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_the_in_cluster_path_never_imports_kubernetes(tmp_path: Path) -> None:
    """The agent's modules and its in-cluster pod source (up to its first list, refused
    here) leave the official client unimported: its models cost ~30 MiB resident."""
    token, ca = sa_tree(tmp_path)
    code = f"""
import sys
from pathlib import Path
import otel_podnet.cli, otel_podnet.run, otel_podnet.agent
from otel_podnet import kube, kube_source
from otel_podnet.settings import NotReady
env = {{"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "{closed_port()}"}}
target = kube_source.ApiTarget(True, None, "in-cluster")
try:
    kube.open_source(target, "n1", 0.3, env=env, token_file=Path({str(token)!r}), ca_file=Path({str(ca)!r}))
except NotReady as exc:
    print(exc)
print(sorted(m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    lines = out.stdout.splitlines()
    assert lines[0].endswith("unreachable: [Errno 111] Connection refused (retried for 0.3 s)"), out.stdout
    assert lines[1] == "[]"


def test_a_kubeconfig_without_the_kubernetes_package_is_the_same_one_line_error(tmp_path: Path) -> None:
    """The official client is needed for a kubeconfig only; without it, the error the agent
    gave before (when kube.py imported it at once)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    code = f"""
import sys
from pathlib import Path
sys.modules["kubernetes"] = None  # not installed
from otel_podnet import kube
from otel_podnet.kube_source import ApiTarget
from otel_podnet.settings import ConfigError
try:
    kube.load_configuration(ApiTarget(False, Path({str(kubeconfig)!r}), "kubeconfig k"))
except ConfigError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == (
        "kubeconfig k: the Kubernetes API needs the Python package 'kubernetes' (import of kubernetes halted; None in "
        "sys.modules); expected it installed with otel-podnet"
    )
