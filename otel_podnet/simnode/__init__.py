"""A simulated Kubernetes node on this machine, for the demo and the kernel tests.

Pods are network namespaces with a veth pair into a bridge, and kubelet-named cgroup v2
directories (systemd or cgroupfs driver) holding their processes. The bridge and the node
address live in a "node" namespace of their own, so every test address exists only inside
namespaces this module created. A hostNetwork pod runs in that node namespace in its own
pod cgroup; a "node process" runs there in a non-pod cgroup. :meth:`SimNode.cleanup` kills
every process and removes every namespace and cgroup it made, also after a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Any

import yaml

from . import delay

_logger = getLogger(__name__)

NET4 = "198.18.{n}.{h}"  # RFC 2544 benchmarking range: never routed anywhere
NET6 = "2001:db8:{n:x}::{h:x}"  # documentation range


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def unwind_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``) raise SystemExit in the main thread, so that a
    script's ``with SimNode(...)`` blocks remove the namespaces and cgroups they made; by
    default Python ends the process at once and leaves them behind."""

    def _exit(signum: int, _frame: Any) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


@dataclass
class SimPod:
    name: str
    namespace: str
    uid: str
    netns: str
    ip4: str
    ip6: str | None
    cgroup: Path | None  # the container cgroup its processes go into
    pod_cgroup: Path | None
    host_network: bool = False
    in_pod_cgroup: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    iface: str = "eth0"
    host_iface: str = ""
    mac: str = ""

    def iface_counters(self, node: SimNode) -> dict[str, int]:
        """rx/tx bytes and packets of the pod's interface, as the kernel counts them."""
        out = {}
        for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            out[k] = int(sh("ip", "netns", "exec", self.netns, "cat", f"/sys/class/net/{self.iface}/statistics/{k}"))
        return out

    def tcp_counters(self) -> dict[str, int]:
        """The kernel's TCP counters of the pod's namespace (``Tcp:`` in /proc/net/snmp)."""
        rows = [
            ln.split()
            for ln in sh("ip", "netns", "exec", self.netns, "cat", "/proc/net/snmp").splitlines()
            if ln.startswith("Tcp:")
        ]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


class SimNode:
    def __init__(self, cgroup_root: Path, name: str = "sim-node", net: int | None = None) -> None:
        """``net``: the third octet of the node's 198.18.0.0/16 subnet (default: random in
        20..219). A test that needs its pods' IPs unique on a shared machine, where another
        simulated node's non-pod sockets with the same IPs would be attributed to its pods
        by IP, picks one outside that range."""
        self.cgroup_root = cgroup_root
        self.name = name
        self.tag = secrets.token_hex(3)
        self.net = secrets.randbelow(200) + 20 if net is None else net
        self.node_ns = f"pn{self.tag}-node"
        self.node_ip4 = NET4.format(n=self.net, h=1)
        self.node_ip6 = NET6.format(n=self.net, h=1)
        self.pods: list[SimPod] = []
        self._netns: list[str] = []
        self._cgroups: list[Path] = []  # in creation order; removed in reverse
        self._shared_cgroups: list[Path] = []  # parents it made that others may use too
        self._procs: list[subprocess.Popen[str]] = []
        self._hosts = 1
        self.node_cgroup = self._mkcgroup(Path(f"podnet-sim-{self.tag}.slice") / "node.scope")
        self.outside_cgroup = self._mkcgroup(Path(f"podnet-sim-{self.tag}.slice") / "outside.scope")
        try:
            self._mknetns(self.node_ns)
            sh("ip", "-n", self.node_ns, "link", "add", "br0", "type", "bridge")
            # no IGMP reports from the node or the pods: the wire carries only test traffic
            sh("ip", "-n", self.node_ns, "link", "set", "br0", "multicast", "off")
            sh("ip", "netns", "exec", self.node_ns, "sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0")
            sh("ip", "-n", self.node_ns, "addr", "add", f"{self.node_ip4}/24", "dev", "br0")
            sh("ip", "-n", self.node_ns, "-6", "addr", "add", f"{self.node_ip6}/64", "dev", "br0", "nodad")
            sh("ip", "-n", self.node_ns, "link", "set", "br0", "up")
        except BaseException:
            self.cleanup()
            raise

    # -- building --------------------------------------------------------------------------

    def _mknetns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _mkcgroup(self, rel: Path, shared: int = 0) -> Path:
        """Make ``rel`` under the cgroup root. Its first ``shared`` parts (``kubepods.slice``,
        ``kubepods-burstable.slice``, ...) are shared with every other simulated node on this
        machine (test runs go on concurrently): made when missing but never killed, and
        removed at cleanup only when nobody else uses them. The rest is this node's own."""
        path = self.cgroup_root
        for i, part in enumerate(rel.parts):
            path = path / part
            try:
                path.mkdir()
            except FileExistsError:
                continue
            (self._shared_cgroups if i < shared else self._cgroups).append(path)
        return path

    def add_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        qos: str = "burstable",
        driver: str = "systemd",
        runtime: str = "cri-containerd",
        host_network: bool = False,
        in_pod_cgroup: bool = True,
        ipv6: bool = False,
        labels: dict[str, str] | None = None,
        uid: str | None = None,
    ) -> SimPod:
        """A pod; ``uid`` is the Pod object's UID when the test created one in an API server."""
        uid = uid or str(uuid.uuid4())
        cid = secrets.token_hex(32)
        pod_cg = cont_cg = None
        if in_pod_cgroup:
            if driver == "systemd":
                u = uid.replace("-", "_")
                if qos == "guaranteed":
                    rel = Path("kubepods.slice") / f"kubepods-pod{u}.slice"
                else:
                    rel = Path("kubepods.slice") / f"kubepods-{qos}.slice" / f"kubepods-{qos}-pod{u}.slice"
                scope = f"{runtime}-{cid}.scope"
            else:
                rel = Path("kubepods") / (f"pod{uid}" if qos == "guaranteed" else f"{qos}/pod{uid}")
                scope = cid
            pod_cg = self._mkcgroup(rel, shared=len(rel.parts) - 1)
            cont_cg = self._mkcgroup(rel / scope, shared=len(rel.parts) - 1)
        else:
            cont_cg = self.outside_cgroup
        if host_network:
            pod = SimPod(
                name,
                namespace,
                uid,
                self.node_ns,
                self.node_ip4,
                self.node_ip6 if ipv6 else None,
                cont_cg,
                pod_cg,
                host_network=True,
                in_pod_cgroup=in_pod_cgroup,
                iface="br0",
            )
        else:
            self._hosts += 1
            h = self._hosts
            ns = f"pn{self.tag}-{h}"
            self._mknetns(ns)
            host_if = f"veth{self.tag}{h}"
            sh("ip", "-n", self.node_ns, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.node_ns, "link", "set", host_if, "multicast", "off")
            sh("ip", "-n", ns, "link", "set", "eth0", "multicast", "off")
            sh("ip", "-n", self.node_ns, "link", "set", host_if, "master", "br0", "up")
            ip4 = NET4.format(n=self.net, h=h)
            ip6 = NET6.format(n=self.net, h=h) if ipv6 else None
            if not ipv6:
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", "eth0")
            if ip6:
                sh("ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            mac = json.loads(sh("ip", "-j", "-n", ns, "link", "show", "eth0"))[0]["address"]
            pod = SimPod(
                name,
                namespace,
                uid,
                ns,
                ip4,
                ip6,
                cont_cg,
                pod_cg,
                in_pod_cgroup=in_pod_cgroup,
                host_iface=host_if,
                mac=mac,
            )
        pod.labels = dict(labels or {})
        self.pods.append(pod)
        return pod

    def static_neighbors(self) -> None:
        """Make the wire quiet: permanent neighbour entries everywhere, so no ARP crosses
        the veths, and no IPv6 (router solicitations, MLD) on the node side when
        no pod uses it."""
        node_devs = ["br0", *(p.host_iface for p in self.pods if p.host_iface)]
        if not any(p.ip6 for p in self.pods):
            for dev in node_devs:
                sh("ip", "netns", "exec", self.node_ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        br_mac = json.loads(sh("ip", "-j", "-n", self.node_ns, "link", "show", "br0"))[0]["address"]
        hosts = [(p.ip4, p.ip6, p.mac) for p in self.pods if not p.host_network]
        hosts.append((self.node_ip4, self.node_ip6, br_mac))
        for p in self.pods:
            ns = p.netns
            for ip4, ip6, mac in hosts:
                if ip4 == p.ip4 and not p.host_network:
                    continue
                if p.host_network and ip4 == self.node_ip4:
                    continue
                dev = p.iface
                sh("ip", "-n", ns, "neigh", "replace", ip4, "lladdr", mac, "dev", dev, "nud", "permanent")
                if ip6 and p.ip6:
                    sh("ip", "-n", ns, "neigh", "replace", ip6, "lladdr", mac, "dev", dev, "nud", "permanent")
        for ip4, _ip6, mac in hosts[:-1]:
            sh("ip", "-n", self.node_ns, "neigh", "replace", ip4, "lladdr", mac, "dev", "br0", "nud", "permanent")
        # and the bridge knows every pod's port from the start: a first frame to a pod that
        # has sent nothing yet would otherwise be flooded to the other pods' interfaces
        for p in self.pods:
            if p.host_iface:
                sh("bridge", "-n", self.node_ns, "fdb", "replace", p.mac, "dev", p.host_iface, "master", "static")

    def delay_link(self, pod: SimPod, seconds: float, lifetime: float = 600.0) -> subprocess.Popen[str]:
        """Put a delay line between a pod and the bridge: every frame the pod sends waits
        ``seconds`` before it reaches the bridge (so its SYN-ACKs, replies and ACKs arrive
        late); frames to the pod pass at once. The pod's veth peer moves into a relay
        namespace of its own, a new veth joins that namespace to the bridge, and
        ``otel_podnet.simnode.delay`` copies frames between the two. Call before
        :meth:`static_neighbors`."""
        if pod.host_network or not pod.host_iface:
            raise ValueError(f"{pod.name}: only a pod with its own veth can be delayed")
        self._hosts += 1
        n = self._hosts
        ns = f"pn{self.tag}-d{n}"
        self._mknetns(ns)
        for conf in ("all", "default"):  # no addresses, no IPv6 chatter: a plain wire
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
        pod_side = pod.host_iface
        bridge_port = f"veth{self.tag}d{n}"
        sh("ip", "-n", self.node_ns, "link", "set", pod_side, "nomaster")
        sh("ip", "-n", self.node_ns, "link", "set", pod_side, "netns", ns)
        sh("ip", "-n", self.node_ns, "link", "add", bridge_port, "type", "veth", "peer", "name", "up0", "netns", ns)
        sh("ip", "-n", self.node_ns, "link", "set", bridge_port, "multicast", "off")
        sh("ip", "-n", self.node_ns, "link", "set", bridge_port, "master", "br0", "up")
        for dev in (pod_side, "up0"):
            sh("ip", "-n", ns, "link", "set", dev, "multicast", "off", "up")
        pod.host_iface = bridge_port
        argv = [sys.executable, "-m", "otel_podnet.simnode.delay", "--a", pod_side, "--b", "up0"]
        argv += ["--delayed", pod_side, "--delay", str(seconds), "--lifetime", str(lifetime)]
        relay = self._spawn_in(ns, self.node_cgroup, argv)
        self.wait_ready(relay)
        return relay

    @staticmethod
    def stop_delay(relay: subprocess.Popen[str]) -> delay.Report:
        """Stop a delay line from :meth:`delay_link` and return what it did."""
        relay.terminate()
        out, _ = relay.communicate(timeout=10)
        return delay.Report.parse(out.splitlines()[-1])

    def set_offloads(self, pod: SimPod, on: bool) -> None:
        v = "on" if on else "off"
        for ns, dev in ((pod.netns, pod.iface), (self.node_ns, pod.host_iface)):
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", v, "gso", v, "gro", v, check=False)

    def sysctl(self, pod: SimPod, setting: str) -> None:
        sh("ip", "netns", "exec", pod.netns, "sysctl", "-qw", setting)

    # -- running ---------------------------------------------------------------------------

    def spawn(self, pod: SimPod | None, argv: Sequence[str], stdin: bool = False) -> subprocess.Popen[str]:
        """Run argv in the pod's network namespace and cgroup (None: a node process)."""
        netns = pod.netns if pod else self.node_ns
        cgroup = (pod.cgroup if pod else self.node_cgroup) or self.node_cgroup
        return self._spawn_in(netns, cgroup, argv, stdin)

    def _spawn_in(self, netns: str, cgroup: Path, argv: Sequence[str], stdin: bool = False) -> subprocess.Popen[str]:
        procs_file = str(cgroup / "cgroup.procs")

        def _enter() -> None:
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))

        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_enter,
        )
        self._procs.append(proc)
        return proc

    def workload(self, pod: SimPod | None, mode: str, stdin: bool = False, **kw: Any) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "otel_podnet.simnode.workload", mode]
        for k, v in kw.items():
            argv += [f"--{k}", str(v)]
        return self.spawn(pod, argv, stdin=stdin)

    @staticmethod
    def wait_ready(proc: subprocess.Popen[str], timeout: float = 20) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"workload did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")

    @staticmethod
    def result(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, int]:
        out, err = proc.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"workload failed ({proc.returncode}): {err.strip()[-2000:]}")
        res: dict[str, int] = json.loads(lines[-1])
        return res

    # -- inventory ----------------------------------------------------------------------------

    def pod_list(self, pods: Sequence[SimPod] | None = None, phase: str = "Running") -> dict[str, Any]:
        items = []
        for p in self.pods if pods is None else pods:
            ips = [p.ip4] + ([p.ip6] if p.ip6 else [])
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid, "labels": p.labels},
                    "spec": {
                        "nodeName": self.name,
                        "hostNetwork": p.host_network,
                        "containers": [{"name": "app", "image": "sim"}],
                    },
                    "status": {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
                }
            )
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": ""}, "items": items}

    def write_pod_list(self, path: Path, pods: Sequence[SimPod] | None = None) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.pod_list(pods)))
        os.replace(tmp, path)

    # -- teardown --------------------------------------------------------------------------

    def remove_pod(self, pod: SimPod) -> None:
        """Kill the pod's processes and remove its cgroups and namespace."""
        for cg in (pod.cgroup, pod.pod_cgroup):
            if cg is not None and cg != self.outside_cgroup:
                self._kill_cgroup(cg)
        for cg in (pod.cgroup, pod.pod_cgroup):
            if cg is not None and cg != self.outside_cgroup and cg in self._cgroups:
                self._rmdir(cg)
                self._cgroups.remove(cg)
        if not pod.host_network and pod.netns in self._netns:
            sh("ip", "netns", "del", pod.netns, check=False)
            self._netns.remove(pod.netns)
        self.pods.remove(pod)

    def _kill_cgroup(self, cg: Path) -> None:
        kill = cg / "cgroup.kill"
        try:
            if kill.exists():
                kill.write_text("1")
            else:
                for pid in (cg / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass

    def _rmdir(self, cg: Path) -> None:
        for _ in range(100):
            try:
                cg.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                self._kill_cgroup(cg)
                time.sleep(0.05)
        _logger.warning("could not remove cgroup %s", cg)

    def cleanup(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for cg in reversed(self._cgroups):
            self._kill_cgroup(cg)
        for proc in self._procs:
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass
        self._procs.clear()
        for cg in reversed(self._cgroups):
            self._rmdir(cg)
        self._cgroups.clear()
        for cg in reversed(self._shared_cgroups):
            try:
                cg.rmdir()  # only when empty: another node's pods may live under it
            except OSError:
                pass
        self._shared_cgroups.clear()
        for ns in reversed(self._netns):
            sh("ip", "netns", "del", ns, check=False)
        self._netns.clear()

    def __enter__(self) -> SimNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
