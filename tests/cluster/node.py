"""A real single-node Kubernetes cluster on this machine, for tests/cluster.

Every component is the real one: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet and kube-proxy built from the pinned ``k8s.io/kubernetes``
module (tests/e2e/infra/build-kube.sh), containerd, runc and the CNI plugins from
Debian's packages. Nothing of the machine's own configuration is used or changed
beyond what is listed here, and :meth:`Node.teardown` undoes all of it, also after a
failed start:

- an interface ``NODE_IF`` (a veth pair) with the node's address ``NODE_IP`` (the apiserver
  advertises it, the kubelet registers it, pods reach the host through it);
- containerd with its own root, state, socket and configuration under the work
  directory; its shims, containers, overlay mounts and network namespaces;
- the CNI bridge ``BRIDGE`` (pods in ``POD_CIDR``), its veths, host-local leases in the
  work directory;
- the kubelet's cgroups below ``CGROUP_ROOT`` in every hierarchy (a cgroup root of its
  own, so the kubelet never sees, nor cleans up, the ``kubepods`` cgroups of the
  simulated nodes other tests make on this machine);
- kube-proxy's and the kubelet's iptables chains (``KUBE-*``) and the CNI plugins'
  (``CNI-*``), and the sysctls they set (``net.ipv4.ip_forward``,
  ``net.netfilter.nf_conntrack_tcp_be_liberal``), restored to their values before.

The host here has no systemd as PID 1 and a hybrid cgroup layout (cgroup v1
controllers, cgroup v2 at /sys/fs/cgroup/unified): the kubelet runs with the
cgroupfs driver, and runc places every container in the v2 hierarchy at the path it
has in v1 (``/<CGROUP_ROOT>/kubepods/besteffort/pod<uid>/<id>``), where the agent
finds it as on a node with pure cgroup v2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from otel_podnet.cgroups import find_cgroup2_mount
from tests.e2e.apiserver import ApiServer, _free_ports, _issue_cert, _Process, run_apiserver

NODE_NAME: Final = "podnet-node"
#: The node's address, on a dummy interface of its own.
NODE_IF: Final = "podnet-node0"
NODE_IP: Final = "10.233.0.1"
#: Pods of this node; private ranges that nothing else on these machines uses (the
#: simulated pods of other tests are in 198.18.0.0/15).
POD_CIDR: Final = "10.231.0.0/24"
CLUSTER_CIDR: Final = "10.231.0.0/16"
SERVICE_CIDR: Final = "10.232.0.0/24"
#: The first address of SERVICE_CIDR: the "kubernetes" Service.
API_SERVICE_IP: Final = "10.232.0.1"
BRIDGE: Final = "podnetbr0"
CNI_NETWORK: Final = "podnet-cluster"
#: The kubelet's --cgroup-root: a "kubelet*" directory, which the agent searches for
#: kubepods below it, as on nodes whose kubelet runs with a cgroup root (kind, k3s).
CGROUP_ROOT: Final = "kubelet-podnet"
CNI_BIN_DIR: Final = Path("/usr/lib/cni")
_FIXED_DIRS: Final = (Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/log/containers"))
RUNC: Final = os.environ.get("PODNET_CLUSTER_RUNC", "/usr/sbin/runc")
CGROUP_V1: Final = Path("/sys/fs/cgroup")


def _run(argv: Sequence[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _iptables_chains() -> set[tuple[str, str, str]]:
    """(binary, table, chain) of every chain of iptables and ip6tables."""
    out = set()
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            proc = _run([binary, "-w", "-t", table, "-S"], check=False)
            for line in proc.stdout.splitlines():
                if line.startswith("-N "):
                    out.add((binary, table, line.split()[1]))
    return out


def _remove_chains(chains: set[tuple[str, str, str]]) -> None:
    """Delete the rules jumping to ``chains`` from anywhere, then flush and delete them."""
    for binary, table in {(b, t) for b, t, _ in chains}:
        names = {c for b, t, c in chains if (b, t) == (binary, table)}
        rules = _run([binary, "-w", "-t", table, "-S"], check=False).stdout.splitlines()
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in names:
                _run([binary, "-w", "-t", table, "-D", *parts[1:]], check=False)
        for name in names:
            _run([binary, "-w", "-t", table, "-F", name], check=False)
        for name in names:
            _run([binary, "-w", "-t", table, "-X", name], check=False)


def _mounts_under(prefixes: Sequence[Path]) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split(" ")[4].replace("\\040", " ")
        if any(target == str(p) or target.startswith(f"{p}/") for p in prefixes):
            out.append(target)
    return out


def _cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: the v1 controllers and named hierarchies, and v2."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            out.append(Path(pre.split(" ")[4]))
    return out


def _procs_in(tree: Path) -> set[int]:
    pids: set[int] = set()
    for dirpath, _, files in os.walk(tree):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _rmdir_tree(tree: Path) -> list[str]:
    """rmdir a cgroup tree bottom-up; the directories that would not go."""
    left = []
    for dirpath, _, _ in sorted(os.walk(tree), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as exc:
            left.append(f"{dirpath}: {exc.strerror}")
    return left


class Node:
    """The running node; made by :func:`run_node`."""

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.api: ApiServer | None = None
        self.containerd_root = workdir / "containerd" / "root"
        self.containerd_state = workdir / "containerd" / "state"
        self.containerd_sock = workdir / "containerd" / "containerd.sock"
        self.kubelet_dir = workdir / "kubelet"
        self.kubelet_port = 0
        self.cni_conf_dir = workdir / "cni" / "net.d"
        self.cni_data_dir = workdir / "cni" / "ipam"
        self.cgroup2 = find_cgroup2_mount()
        self._processes: list[_Process] = []
        self._cleanups: list[tuple[str, Callable[[], None]]] = []
        self._chains_before: set[tuple[str, str, str]] = set()
        self._sysctls: dict[str, str | None] = {}
        self._netns_before: set[str] = set()
        self.problems: list[str] = []
        self._dirs_made: list[Path] = []

    # ---- helpers ---------------------------------------------------------

    @property
    def api_(self) -> ApiServer:
        assert self.api is not None, "apiserver not started"
        return self.api

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.api_.kubectl(*args, input_text=input_text, check=check).stdout

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ctr", "--address", str(self.containerd_sock), "--namespace", "k8s.io", *args], check=check)

    def import_image(self, archive: Path) -> None:
        """``ctr -n k8s.io images import``, into this node's containerd."""
        self.ctr("images", "import", "--no-unpack", str(archive))

    def kubelet_get(self, path: str) -> Any:
        """GET from the kubelet's own API (port ``kubelet_port``), as the cluster's admin."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the kubelet's self-signed serving certificate
        ctx.load_cert_chain(str(self.api_.admin_cert_file), str(self.api_.admin_key_file))
        url = f"https://{NODE_IP}:{self.kubelet_port}{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=30) as resp:
            return json.loads(resp.read())

    def _process(self, name: str, argv: Sequence[str]) -> _Process:
        proc = _Process(name, argv, self.logs / f"{name}.log")
        self._processes.append(proc)
        proc.start()
        return proc

    def _on_teardown(self, what: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((what, fn))

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self._processes:
                if not p.running() and p.exit_code() is not None and p.name != "kube-proxy-cleanup":
                    raise RuntimeError(f"{p.name} exited {p.exit_code()} while waiting for {what}:\n{p.log_tail()}")
            if check():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    # ---- start -----------------------------------------------------------

    def start(self, stack: contextlib.ExitStack, images: Sequence[Path]) -> None:
        """Start every part; ``stack`` undoes them (in reverse order) on exit."""
        self._chains_before = _iptables_chains()
        self._netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        # Fixed paths that containerd 1.6 and libcni use whatever their configuration:
        # the shims' sockets (/run/containerd/s), ctr's fifos, the CNI result cache, the
        # kubelet's links to container logs.
        self._dirs_made = [d for d in _FIXED_DIRS if not d.exists()]
        for name in ("net.ipv4.ip_forward", "net.netfilter.nf_conntrack_tcp_be_liberal"):
            self._sysctls[name] = _read_sysctl(name)
        stack.callback(self._final)
        self._network()
        self.api = stack.enter_context(
            run_apiserver(
                self.workdir / "control-plane",
                bin_dir=self.bin_dir,
                extra_sans=[f"IP:{NODE_IP}", f"IP:{API_SERVICE_IP}"],
                extra_args=[
                    "--bind-address=0.0.0.0",
                    f"--advertise-address={NODE_IP}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    # The "kubernetes" Service's endpoints: the node address, so that
                    # pods (the agent) reach the API through kube-proxy as in-cluster.
                    "--endpoint-reconciler-type=lease",
                    # kubectl logs: to the kubelet by the node's address, as the admin.
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--kubelet-client-certificate={self.workdir / 'control-plane' / 'pki' / 'admin.crt'}",
                    f"--kubelet-client-key={self.workdir / 'control-plane' / 'pki' / 'admin.key'}",
                ],
            )
        )
        # Runs while the apiserver still does: pods are deleted through it first.
        stack.callback(self._teardown)
        self._controllers()
        self._containerd()
        for archive in images:
            self.import_image(archive)
        self._kubelet()
        self._kube_proxy()

    def _network(self) -> None:
        # A veth pair (this kernel has no dummy driver); the address is local to the host.
        _run(["ip", "link", "add", NODE_IF, "type", "veth", "peer", "name", f"{NODE_IF}p"])
        _run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_IF])
        _run(["ip", "link", "set", NODE_IF, "up"])

    def _admin_kubeconfig(self) -> str:
        return str(self.api_.admin_kubeconfig)

    def _controllers(self) -> None:
        pki = self.api_.workdir / "pki"
        self._process(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self._admin_kubeconfig()}",
                f"--authentication-kubeconfig={self._admin_kubeconfig()}",
                f"--authorization-kubeconfig={self._admin_kubeconfig()}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._process(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={self._admin_kubeconfig()}",
                f"--authentication-kubeconfig={self._admin_kubeconfig()}",
                f"--authorization-kubeconfig={self._admin_kubeconfig()}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _containerd(self) -> None:
        for d in (self.containerd_root, self.containerd_state, self.cni_conf_dir, self.cni_data_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Keep containerd's socket path short (a unix socket path has at most 107 bytes).
        self.cni_conf_dir.joinpath("10-podnet.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.cni_data_dir),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )
        config = self.workdir / "containerd" / "config.toml"
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.containerd_root}"',
                    f'state = "{self.containerd_state}"',
                    # Only what the CRI needs; nothing that would touch the machine's own
                    # containerd paths (/opt/containerd, /var/lib/containerd).
                    'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
                    ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",'
                    ' "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]',
                    "[grpc]",
                    f'  address = "{self.containerd_sock}"',
                    "[ttrpc]",
                    f'  address = "{self.containerd_sock}.ttrpc"',
                    "[debug]",
                    '  level = "info"',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f'  path = "{self.workdir / "containerd" / "opt"}"',
                    '[plugins."io.containerd.grpc.v1.cri"]',
                    f'  sandbox_image = "{self.pause_image}"',
                    "  enable_selinux = false",
                    "  disable_apparmor = true",
                    # The sandboxes these tests run in hold no CAP_SYS_RESOURCE: no process may
                    # lower its oom_score_adj (the kubelet asks -998 for sandboxes, -997 for
                    # critical pods). Capped at containerd's own, as for rootless containerd.
                    "  restrict_oom_score_adj = true",
                    # Network namespaces below containerd's state directory, not /run/netns.
                    "  netns_mounts_under_state_dir = true",
                    '[plugins."io.containerd.grpc.v1.cri".containerd]',
                    '  snapshotter = "overlayfs"',
                    '  default_runtime_name = "runc"',
                    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
                    '  runtime_type = "io.containerd.runc.v2"',
                    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
                    "  SystemdCgroup = false",
                    f'  Root = "{self.containerd_state / "runc"}"',
                    f'  BinaryName = "{RUNC}"',
                    '[plugins."io.containerd.grpc.v1.cri".cni]',
                    f'  bin_dir = "{CNI_BIN_DIR}"',
                    f'  conf_dir = "{self.cni_conf_dir}"',
                    "  max_conf_num = 1",
                    "",
                ]
            )
        )
        self._on_teardown("containerd", self._stop_containerd)
        self._process("containerd", ["containerd", "--config", str(config)])
        self.wait(self.containerd_sock.exists, 60, "containerd's socket")
        self.wait(lambda: self.ctr("version", check=False).returncode == 0, 60, "containerd to answer")

    pause_image = "localhost/podnet-test/pause:1"

    def _kubelet(self) -> None:
        pki = self.api_.workdir / "pki"
        ca = (pki / "ca.key", pki / "ca.crt")
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        key, crt = _issue_cert(
            pki,
            "kubelet-client",
            f"/O=system:nodes/CN=system:node:{NODE_NAME}",
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=clientAuth",
            ],
            ca,
            10,
        )
        kubeconfig = self.workdir / "kubelet.kubeconfig"
        kubeconfig.write_text(
            self.api_.admin_kubeconfig.read_text()
            .replace(_b64_file(self.api_.admin_cert_file), _b64_file(crt))
            .replace(_b64_file(self.api_.admin_key_file), _b64_file(key))
        )
        (self.kubelet_port,) = _free_ports(1)
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        config = self.workdir / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": NODE_IP,
                    "port": self.kubelet_port,
                    "readOnlyPort": 0,
                    "healthzPort": 0,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{CGROUP_ROOT}",
                    "cgroupsPerQOS": True,
                    "enforceNodeAllocatable": ["pods"],
                    "failSwapOn": False,
                    "failCgroupV1": False,
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(resolv),
                    "podCIDR": POD_CIDR,
                    "maxPods": 110,
                    "serializeImagePulls": False,
                    # The machine's disk and memory are shared: no eviction, no image GC.
                    "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "volumePluginDir": str(self.workdir / "volume-plugins"),
                    "podLogsDir": str(self.workdir / "pod-logs"),
                    "nodeStatusReportFrequency": "10s",
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "10s",
                    "registerNode": True,
                    "staticPodPath": "",
                    "localStorageCapacityIsolation": False,
                    "protectKernelDefaults": False,
                    "makeIPTablesUtilChains": False,
                    "oomScoreAdj": 0,
                },
                indent=1,
            )
        )
        # The kubelet's --cgroup-root must exist in every hierarchy; a v1 cpuset cgroup
        # starts with no CPUs and no memory nodes: give it its parent's.
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / CGROUP_ROOT
            root.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists() and not (root / name).read_text().strip():
                    (root / name).write_text((hierarchy / name).read_text())
        self._on_teardown("kubelet", self._stop_kubelet)
        self._process(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

        def ready() -> bool:
            out = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if not out:
                return False
            conds = {c["type"]: c["status"] for c in json.loads(out)["status"].get("conditions", [])}
            return conds.get("Ready") == "True"

        self.wait(ready, 180, f"node {NODE_NAME} Ready")

    def _kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": self._admin_kubeconfig()},
                    "mode": "iptables",
                    "oomScoreAdj": 0,
                    "hostnameOverride": NODE_NAME,
                    "clusterCIDR": CLUSTER_CIDR,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": "",
                    "metricsBindAddress": "",
                    "nodePortAddresses": [f"{NODE_IP}/32"],
                    # Leave the machine's conntrack table size and timeouts alone; be liberal
                    # (rather than drop INVALID packets in FORWARD, which bridged traffic of the
                    # other tests' simulated nodes passes too).
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                        "tcpBeLiberal": True,
                    },
                    "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
                },
                indent=1,
            )
        )
        self._on_teardown("kube-proxy", self._stop_kube_proxy)
        self._process("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])

        def has_api_service() -> bool:
            return "KUBE-SVC-" in _run(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"], check=False).stdout

        self.wait(has_api_service, 90, "kube-proxy's rule for the kubernetes Service")

    # ---- stop ------------------------------------------------------------

    def _proc(self, name: str) -> _Process | None:
        return next((p for p in self._processes if p.name == name), None)

    def _stop_kube_proxy(self) -> None:
        p = self._proc("kube-proxy")
        if p:
            p.stop()
        _run([str(self.bin_dir / "kube-proxy"), "--cleanup", "--v=0"], check=False)

    def _stop_kubelet(self) -> None:
        p = self._proc("kubelet")
        if p:
            p.stop()

    def _shims(self) -> list[int]:
        """containerd-shim processes of this node's containerd (by its socket in their command line)."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(self.containerd_sock).encode() in cmd:
                out.append(int(pid))
        return out

    def _stop_containerd(self) -> None:
        # Every pod sandbox through the CRI first (runs CNI DEL: veths, leases, portmap rules).
        if self._proc("containerd") and self._proc("containerd").running():  # type: ignore[union-attr]
            for ctr_id in self.ctr("containers", "list", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", ctr_id, check=False)
        # What is left in the kubelet's cgroups (the containers' processes) is ours: kill it.
        for hierarchy in _cgroup_hierarchies():
            for pid in _procs_in(hierarchy / CGROUP_ROOT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._proc("containerd") and self._proc("containerd").running():  # type: ignore[union-attr]
            deadline = time.monotonic() + 20
            for ctr_id in self.ctr("containers", "list", "-q", check=False).stdout.split():
                while time.monotonic() < deadline:
                    if self.ctr("tasks", "delete", "-f", ctr_id, check=False).returncode == 0:
                        break
                    if "not found" in self.ctr("tasks", "ls", check=False).stdout:
                        break
                    time.sleep(0.2)
                    if ctr_id not in self.ctr("tasks", "ls", "-q", check=False).stdout:
                        break
        for pid in self._shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p = self._proc("containerd")
        if p:
            p.stop()

    def _delete_pods(self) -> None:
        """Every pod deleted through the API, and gone from the node (the kubelet stops its
        containers and its sandbox: CNI DEL removes its veth, lease and port mappings)."""
        if self.api is None or not self.api.running():
            return
        self.kubectl("delete", "pods", "--all", "--all-namespaces", "--wait=false", "--grace-period=5", check=False)

        def none_left() -> bool:
            out = self.kubectl("get", "pods", "--all-namespaces", "-o", "name", check=False)
            return not out.strip()

        with contextlib.suppress(TimeoutError, RuntimeError):
            # Controllers recreate pods of Deployments, DaemonSets and Jobs: stop them first.
            for kind in ("daemonsets", "deployments", "replicasets", "jobs"):
                self.kubectl("delete", kind, "--all", "--all-namespaces", "--wait=false", check=False)
            self.wait(none_left, 60, "every pod deleted")

    def _teardown(self) -> None:
        """Undo everything but the apiserver and the dummy interface, in reverse order."""
        for what, fn in [("pods", self._delete_pods), *reversed(self._cleanups)]:
            try:
                fn()
            except Exception as exc:  # keep tearing down
                self.problems.append(f"{what}: {exc!r}")
        self._cleanups.clear()
        for p in self._processes:
            if p.running():
                p.stop()
        # Mounts below the work directory: overlay root filesystems, shm, netns, volumes.
        for target in sorted(_mounts_under([self.workdir]), key=len, reverse=True):
            _run(["umount", "-l", target], check=False)
        left = _mounts_under([self.workdir])
        if left:
            self.problems.append(f"mounts left: {left}")
        # Network namespaces outside the state dir (containerd without the option).
        if os.path.isdir("/run/netns"):
            for ns in set(os.listdir("/run/netns")) - self._netns_before:
                if ns.startswith("cni-"):
                    _run(["ip", "netns", "del", ns], check=False)
        _run(["ip", "link", "del", BRIDGE], check=False)
        for hierarchy in _cgroup_hierarchies():
            tree = hierarchy / CGROUP_ROOT
            if tree.exists():
                left_cg = _rmdir_tree(tree)
                if left_cg:
                    self.problems.append(f"cgroups left: {left_cg[:5]}")
        chains = {c for c in _iptables_chains() - self._chains_before if c[2].startswith(("KUBE-", "CNI-"))}
        _remove_chains(chains)
        left_chains = {c for c in _iptables_chains() - self._chains_before if c[2].startswith(("KUBE-", "CNI-"))}
        if left_chains:
            self.problems.append(f"iptables chains left: {sorted(left_chains)}")
        for shim in self._shims():
            self.problems.append(f"shim {shim} left")
        # The kubelet's links to its pods' logs (removed with the containers, unless the
        # kubelet stopped first).
        with contextlib.suppress(OSError):
            for link in Path("/var/log/containers").iterdir():
                if link.is_symlink() and os.readlink(link).startswith(f"{self.workdir}/"):
                    link.unlink()
        for d in self._dirs_made:
            if d.exists():
                left_files = [str(p) for p in d.rglob("*") if not p.is_dir()]
                if left_files:
                    self.problems.append(f"files left: {left_files[:5]}")
                else:
                    shutil.rmtree(d, ignore_errors=True)

    def _final(self) -> None:
        """After the apiserver stopped: the node address and the sysctls; then report."""
        _run(["ip", "link", "del", NODE_IF], check=False)
        for name, value in self._sysctls.items():
            if value is not None and _read_sysctl(name) != value:
                with contextlib.suppress(OSError):
                    _sysctl_path(name).write_text(value)
        if self.problems:
            raise RuntimeError("cluster teardown left: " + "; ".join(self.problems))


def _b64_file(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


@contextlib.contextmanager
def run_node(
    workdir: Path, bin_dir: Path, images: Sequence[Path] = (), pause_image: str | None = None
) -> Iterator[Node]:
    """The node, up and Ready with ``images`` imported; everything undone on exit, also
    when the start or the body fails."""
    node = Node(workdir, bin_dir)
    if pause_image:
        node.pause_image = pause_image
    with contextlib.ExitStack() as stack:
        try:
            node.start(stack, images)
        except BaseException:
            for p in node._processes:
                print(f"--- {p.name} ---\n{p.log_tail(30)}")
            raise
        yield node
