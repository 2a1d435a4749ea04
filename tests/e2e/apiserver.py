"""A real kube-apiserver (plus etcd) on loopback for the e2e tests.

Binaries come from ``tests/e2e/infra/build-kube.sh`` (kube-apiserver, kubectl,
etcd and helm built from pinned Go modules and cached under
``${PODNET_CACHE:-/var/cache/otel-podnet}``). Nothing here needs Docker, a
kubelet or the ``kubernetes`` Python package: requests go through urllib.

Typical use::

    with run_apiserver(tmp_path) as api:
        api.create_namespace("demo")
        api.create_pod("demo", "web-0", node_name="node-a")
        api.set_pod_status("demo", "web-0", pod_ip="10.244.1.7")
        token = api.create_sa_token("demo", "default")
        kubeconfig = api.kubeconfig_for_token(token)

The server has RBAC (``--authorization-mode=Node,RBAC``), a self-signed CA, an
admin client certificate in ``system:masters`` and service-account token
signing, so TokenRequest and RBAC denials behave as in a real cluster. There
is no controller-manager or scheduler: no controller creates "default"
service accounts (``create_namespace`` does it), pods are never scheduled
(give them ``spec.nodeName``) and their status is only what a test sets via
``set_pod_status``, the way a kubelet would.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

JSON = dict[str, Any]

_HERE: Final = Path(__file__).resolve().parent
BUILD_SCRIPT: Final = _HERE / "infra" / "build-kube.sh"

#: Service-account token issuer configured on the test apiserver.
SA_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
#: The admin user of ``admin_kubeconfig`` (client certificate, group system:masters).
ADMIN_USER: Final = "otel-podnet-e2e-admin"

_STRATEGIC_MERGE: Final = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A request answered with HTTP status >= 400."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        reason = body.get("message", "") if isinstance(body, dict) else str(body)[:500]
        super().__init__(f"{method} {path}: HTTP {status}: {reason}")


# --------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------


@functools.cache
def build_kube() -> Path:
    """Build (or reuse from cache) kube-apiserver, kubectl, etcd and helm.

    Returns the directory holding the four binaries. ``PODNET_KUBE_BIN_DIR``
    short-circuits the build with a directory prepared elsewhere. A cold build
    takes several minutes on two cores; later calls are instant.
    """
    override = os.environ.get("PODNET_KUBE_BIN_DIR")
    if override:
        return Path(override)
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} printed no output directory")
    bin_dir = Path(lines[-1])
    for name in ("kube-apiserver", "etcd", "kubectl", "helm"):
        if not (bin_dir / name).is_file():
            raise RuntimeError(f"{BUILD_SCRIPT}: {bin_dir / name} is missing")
    return bin_dir


# --------------------------------------------------------------------------
# Certificates (openssl CLI)
# --------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _issue_cert(
    pki: Path,
    name: str,
    subject: str,
    extensions: Sequence[str],
    ca: tuple[Path, Path] | None,
    serial: int,
) -> tuple[Path, Path]:
    """Create ``<name>.key``/``<name>.crt``; self-signed when ``ca`` is None."""
    key, crt, csr, ext = (pki / f"{name}.{s}" for s in ("key", "crt", "csr", "ext"))
    _ec_key(key)
    ext.write_text("[v3]\n" + "\n".join(extensions) + "\n")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    signer = ["-signkey", str(key)] if ca is None else ["-CA", str(ca[1]), "-CAkey", str(ca[0])]
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        *signer,
        "-set_serial",
        str(serial),
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(ext),
        "-extensions",
        "v3",
        "-out",
        str(crt),
    )
    return key, crt


class _Pki:
    def __init__(self, pki: Path, extra_sans: Sequence[str] = ()) -> None:
        pki.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca_crt = _issue_cert(
            pki,
            "ca",
            "/CN=otel-podnet-e2e-ca",
            ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign", "subjectKeyIdentifier=hash"],
            None,
            1,
        )
        ca = (self.ca_key, self.ca_crt)
        self.serving_key, self.serving_crt = _issue_cert(
            pki,
            "apiserver",
            "/CN=kube-apiserver",
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=serverAuth",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid:always",
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                "DNS:kubernetes.default.svc.cluster.local" + "".join(f",{san}" for san in extra_sans),
            ],
            ca,
            2,
        )
        self.admin_key, self.admin_crt = _issue_cert(
            pki,
            "admin",
            f"/O=system:masters/CN={ADMIN_USER}",
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=clientAuth",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid:always",
            ],
            ca,
            3,
        )
        self.sa_key = pki / "sa.key"
        self.sa_pub = pki / "sa.pub"
        _ec_key(self.sa_key)
        _openssl("pkey", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub))


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies (even by SIGKILL)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class _Process:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting {self.name} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it after ``timeout`` seconds."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            self._signal(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(popen.pid, signal.SIGKILL)
                popen.wait(timeout=30)
        self._popen = None

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# The apiserver handle
# --------------------------------------------------------------------------


class ApiServer:
    """A running kube-apiserver; created by :func:`run_apiserver`."""

    def __init__(
        self,
        workdir: Path,
        bin_dir: Path,
        pki: _Pki,
        port: int,
        etcd_url: str,
        process: _Process,
    ) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.etcd_url = etcd_url
        self.ca_file: Path = pki.ca_crt
        self.admin_cert_file: Path = pki.admin_crt
        self.admin_key_file: Path = pki.admin_key
        self.log_file: Path = process.log_path
        self.admin_kubeconfig: Path = workdir / "admin.kubeconfig"
        self._process = process
        self._kubeconfigs = 0
        self._discovery: dict[str, list[JSON]] = {}
        self._admin_ctx = ssl.create_default_context(cafile=str(self.ca_file))
        self._admin_ctx.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))
        self._anon_ctx = ssl.create_default_context(cafile=str(self.ca_file))
        self._write_kubeconfig(
            self.admin_kubeconfig,
            "admin",
            [
                ("client-certificate-data", _b64(self.admin_cert_file.read_bytes())),
                ("client-key-data", _b64(self.admin_key_file.read_bytes())),
            ],
            None,
        )

    # ---- lifecycle -------------------------------------------------------

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        return self.bin_dir / "helm"

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        """Stop kube-apiserver (etcd keeps running); clients see connection refused."""
        self._process.stop()

    def start(self, timeout: float = 90.0) -> None:
        """(Re)start kube-apiserver on the same port and etcd, and wait for /readyz."""
        self._process.start()
        self.wait_ready(timeout)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the apiserver, stay down ``down_seconds``, start it again."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self._process.running():
                raise RuntimeError(
                    f"kube-apiserver exited with code {self._process.exit_code()}:\n" + self._process.log_tail()
                )
            try:
                status, body = self.request("GET", "/readyz")
                if status == 200:
                    return
                last = f"HTTP {status}: {str(body)[-300:]}"
            except OSError as exc:  # connection refused / reset while starting
                last = repr(exc)
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s ({last}):\n" + self._process.log_tail())

    # ---- kubeconfigs -----------------------------------------------------

    def kubeconfig_for_token(self, token: str, *, name: str | None = None, namespace: str | None = None) -> Path:
        """Write a kubeconfig that authenticates with a bearer ``token``."""
        self._kubeconfigs += 1
        path = self.workdir / "kubeconfigs" / f"{name or f'token-{self._kubeconfigs}'}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_kubeconfig(path, name or "token-user", [("token", token)], namespace)
        return path

    def _write_kubeconfig(
        self,
        path: Path,
        user: str,
        credentials: Sequence[tuple[str, str]],
        namespace: str | None,
    ) -> None:
        q = json.dumps  # JSON strings are valid YAML double-quoted scalars
        lines = [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: otel-podnet-e2e",
            "  cluster:",
            f"    server: {q(self.url)}",
            f"    certificate-authority-data: {q(_b64(self.ca_file.read_bytes()))}",
            "users:",
            f"- name: {q(user)}",
            "  user:",
            *(f"    {k}: {q(v)}" for k, v in credentials),
            "contexts:",
            "- name: otel-podnet-e2e",
            "  context:",
            "    cluster: otel-podnet-e2e",
            f"    user: {q(user)}",
            *([f"    namespace: {q(namespace)}"] if namespace else []),
            "current-context: otel-podnet-e2e",
        ]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    # ---- raw HTTP --------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One HTTP request; returns (status, decoded JSON body or text).

        Authenticates with the admin client certificate, or with ``token`` as
        a bearer token (and no client certificate) when given.
        """
        url = self.url + path
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        ctx = self._anon_ctx if token is not None else self._admin_ctx
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                return int(resp.status), _decode(resp.read())
        except urllib.error.HTTPError as err:
            try:
                return int(err.code), _decode(err.read())
            finally:
                err.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        """Like :meth:`request` but raises :class:`ApiError` on HTTP >= 400."""
        status, result = self.request(method, path, body, token=token, query=query, content_type=content_type)
        if status >= 400:
            raise ApiError(method, path, status, result)
        if not isinstance(result, dict):
            raise ApiError(method, path, status, f"not a JSON object: {result!r:.300}")
        return result

    # ---- generic objects -------------------------------------------------

    def resource_path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        """REST path for ``kind`` in ``api_version`` (resolved via discovery)."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if api_version not in self._discovery:
            self._discovery[api_version] = list(self.call("GET", base)["resources"])
        for res in self._discovery[api_version]:
            if res.get("kind") == kind and "/" not in str(res["name"]):
                path = base
                if res.get("namespaced"):
                    if not namespace:
                        raise ValueError(f"{kind} is namespaced: pass a namespace")
                    path += f"/namespaces/{namespace}"
                path += f"/{res['name']}"
                return path + (f"/{name}" if name else "")
        raise KeyError(f"no resource of kind {kind} in {api_version}")

    def create_object(self, obj: Mapping[str, Any], *, dry_run: bool = False, token: str | None = None) -> JSON:
        """POST one object (server-side dry-run with ``dry_run``), strict field validation."""
        meta = obj.get("metadata") or {}
        path = self.resource_path(str(obj["apiVersion"]), str(obj["kind"]), meta.get("namespace"))
        query = {"fieldValidation": "Strict"}
        if dry_run:
            query["dryRun"] = "All"
        return self.call("POST", path, dict(obj), token=token, query=query)

    def get_object(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> JSON:
        return self.call("GET", self.resource_path(api_version, kind, namespace, name))

    # ---- namespaces, service accounts, tokens ----------------------------

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> JSON:
        """Create a namespace and its "default" ServiceAccount (no controller does)."""
        meta: JSON = {"name": name}
        if labels:
            meta["labels"] = dict(labels)
        ns = self.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        self.create_service_account(name, "default", exist_ok=True)
        return ns

    def create_service_account(self, namespace: str, name: str, *, exist_ok: bool = False) -> JSON:
        body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
        status, result = self.request("POST", path, body)
        if status == 409 and exist_ok:
            return self.call("GET", f"{path}/{name}")
        if status >= 400:
            raise ApiError("POST", path, status, result)
        return dict(result)

    def create_sa_token(
        self,
        namespace: str,
        sa_name: str,
        *,
        audiences: Sequence[str] | None = None,
        expiration_seconds: int = 3600,
        bound_pod: tuple[str, str] | None = None,
    ) -> str:
        """Issue a ServiceAccount token through the TokenRequest API.

        ``bound_pod`` is an optional (pod name, pod uid) to bind the token to,
        as the kubelet does for projected tokens.
        """
        spec: JSON = {"expirationSeconds": expiration_seconds}
        if audiences is not None:
            spec["audiences"] = list(audiences)
        if bound_pod is not None:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": bound_pod[0], "uid": bound_pod[1]}
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        result = self.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa_name}/token", body)
        return str(result["status"]["token"])

    def can_i(
        self,
        token: str,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> bool:
        """SelfSubjectAccessReview as the holder of ``token``."""
        attrs: JSON = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attrs["namespace"] = namespace
        if subresource:
            attrs["subresource"] = subresource
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        }
        result = self.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body, token=token)
        return bool(result["status"].get("allowed", False))

    # ---- nodes and pods --------------------------------------------------

    def create_node(self, name: str, internal_ip: str = "127.0.0.1") -> JSON:
        """Register a Node object (no kubelet behind it)."""
        node = self.call(
            "POST",
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            },
        )
        status = {
            "status": {
                "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]
            }
        }
        self.call("PATCH", f"/api/v1/nodes/{name}/status", status, content_type=_STRATEGIC_MERGE)
        return node

    def create_pod(
        self,
        namespace: str,
        name: str,
        node_name: str,
        *,
        labels: Mapping[str, str] | None = None,
        owner_references: Sequence[Mapping[str, Any]] | None = None,
        containers: Sequence[str] = ("app",),
        image: str = "registry.invalid/otel-podnet-e2e/app:1",
        host_network: bool = False,
    ) -> JSON:
        """Create a pod already bound to ``node_name`` (no scheduler needed)."""
        meta: JSON = {"name": name}
        if labels:
            meta["labels"] = dict(labels)
        if owner_references:
            meta["ownerReferences"] = [dict(o) for o in owner_references]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": node_name,
                "hostNetwork": host_network,
                "automountServiceAccountToken": False,
                "containers": [{"name": c, "image": image} for c in containers],
            },
        }
        return self.call("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def set_pod_status(
        self,
        namespace: str,
        name: str,
        *,
        pod_ip: str,
        pod_ips: Sequence[str] | None = None,
        phase: str = "Running",
        host_ip: str | None = "127.0.0.1",
        container_ids: Mapping[str, str] | None = None,
        ready: bool = True,
    ) -> JSON:
        """Set pod status through the ``/status`` subresource, as a kubelet does.

        ``pod_ips`` defaults to ``[pod_ip]`` (the first entry must equal
        ``pod_ip``). ``container_ids`` maps container name to a runtime ID such
        as ``containerd://<64 hex>``; listed containers get a running status.
        """
        ips = list(pod_ips) if pod_ips is not None else [pod_ip]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        running = phase == "Running"
        cond = "True" if running and ready else "False"
        status: JSON = {
            "phase": phase,
            "podIP": pod_ip,
            "podIPs": [{"ip": ip} for ip in ips],
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True" if t == "PodScheduled" else cond, "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
        }
        if host_ip is not None:
            status["hostIP"] = host_ip
            status["hostIPs"] = [{"ip": host_ip}]
        if container_ids:
            pod = self.call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            images = {c["name"]: c["image"] for c in pod["spec"]["containers"]}
            status["containerStatuses"] = [
                {
                    "name": cname,
                    "containerID": cid,
                    "image": images.get(cname, "unknown"),
                    "imageID": "",
                    "ready": running and ready,
                    "started": running,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}} if running else {"waiting": {}},
                }
                for cname, cid in container_ids.items()
            ]
        return self.call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            content_type=_STRATEGIC_MERGE,
        )

    def get_pod(self, namespace: str, name: str) -> JSON:
        return self.call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def delete_pod(self, namespace: str, name: str, *, grace_period_seconds: int = 0) -> None:
        """Delete a pod immediately (there is no kubelet to finish a graceful delete)."""
        self.call(
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": grace_period_seconds},
        )

    # ---- CLI tools -------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input_text: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this server (admin kubeconfig by default)."""
        argv = [
            str(self.kubectl_path),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        proc = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _decode(raw: bytes) -> Any:
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _wait_etcd(etcd: _Process, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not etcd.running():
            raise RuntimeError(f"etcd exited with code {etcd.exit_code()}:\n{etcd.log_tail()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                body = json.loads(resp.read())
                if body.get("health") == "true":
                    return
                last = str(body)
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"etcd not healthy after {timeout}s ({last}):\n{etcd.log_tail()}")


@contextlib.contextmanager
def run_apiserver(
    workdir: Path,
    *,
    bin_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    extra_sans: Sequence[str] = (),
) -> Iterator[ApiServer]:
    """Start etcd and kube-apiserver on loopback; stop both on exit.

    ``workdir`` receives the PKI, etcd data, logs (``logs/``) and kubeconfigs.
    Both processes are stopped (SIGTERM, then SIGKILL) even when startup or
    the ``with`` body fails. ``extra_args`` come after the defaults (a flag given
    twice takes its last value), ``extra_sans`` are added to the serving
    certificate (``IP:...``, ``DNS:...``): the real node of tests/cluster serves
    its pods on a node address and a Service ClusterIP.
    """
    bin_dir = bin_dir or build_kube()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    pki = _Pki(workdir / "pki", extra_sans)
    etcd_client, etcd_peer, secure_port = _free_ports(3)
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"

    etcd = _Process(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=e2e",
            f"--data-dir={workdir / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # test data only; much faster on slow disks
            "--log-level=warn",
        ],
        logs / "etcd.log",
    )
    apiserver = _Process(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={secure_port}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_crt}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_crt}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--api-audiences={SA_ISSUER}",
            # Only an allocation range for Service ClusterIPs; nothing routes there.
            "--service-cluster-ip-range=10.96.0.0/16",
            # No reconciler: do not publish 127.0.0.1 as the "kubernetes" endpoints.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=false",
            "--profiling=false",
            "--v=1",
            *extra_args,
        ],
        logs / "kube-apiserver.log",
    )
    with contextlib.ExitStack() as stack:
        stack.callback(etcd.stop)
        etcd.start()
        _wait_etcd(etcd, etcd_url)
        stack.callback(apiserver.stop)
        apiserver.start()
        api = ApiServer(workdir, bin_dir, pki, secure_port, etcd_url, apiserver)
        api.wait_ready()
        yield api


# --------------------------------------------------------------------------
# pytest fixtures (re-export from a conftest.py to use them by name)
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_bin_dir() -> Path:
    """Directory with kube-apiserver, kubectl, etcd and helm (built once)."""
    return build_kube()


@pytest.fixture(scope="module")
def kube_apiserver(kube_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One apiserver + etcd per test module."""
    with run_apiserver(tmp_path_factory.mktemp("kube"), bin_dir=kube_bin_dir) as api:
        yield api
