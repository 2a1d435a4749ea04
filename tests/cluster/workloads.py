"""Helpers for pods on the real node: waiting for them, finding their processes, network
namespaces and host-side interfaces, and their own reports (their logs)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .node import BRIDGE, CGROUP_ROOT, Node

ETH_HLEN = 14


def wait_phase(node: Node, ns: str, name: str, phase: str, timeout: float = 180) -> Any:
    """The pod once its phase is ``phase`` (and, for Running, every container started)."""
    got: dict[str, Any] = {}

    def check() -> bool:
        nonlocal got
        out = node.kubectl("get", "pod", "-n", ns, name, "-o", "json", check=False)
        if not out:
            return False
        got = json.loads(out)
        status = got.get("status", {})
        if status.get("phase") != phase:
            return False
        if phase == "Running":
            return all(c.get("state", {}).get("running") for c in status.get("containerStatuses", []))
        return True

    try:
        node.wait(check, timeout, f"pod {ns}/{name} {phase}")
    except TimeoutError:
        events = node.kubectl("get", "events", "-n", ns, "-o", "wide", check=False)
        raise AssertionError(f"pod {ns}/{name} not {phase}: {json.dumps(got.get('status'))[:2000]}\n{events}") from None
    return got


def pod_cgroup(node: Node, pod: Any) -> Path:
    """The pod's cgroup in the v2 hierarchy (the kubelet's cgroupfs layout)."""
    uid = pod["metadata"]["uid"]
    qos = pod["status"]["qosClass"].lower()
    rel = Path(CGROUP_ROOT, "kubepods") / ("" if qos == "guaranteed" else qos) / f"pod{uid}"
    return node.cgroup2 / rel


def container_ids(pod: Any) -> set[str]:
    statuses = pod["status"].get("containerStatuses", [])
    return {c["containerID"].split("://", 1)[1] for c in statuses if c.get("containerID")}


def pod_pids(node: Node, pod: Any) -> list[int]:
    """The main process of each of the pod's containers (not the sandbox's pause)."""
    base = pod_cgroup(node, pod)
    ids = container_ids(pod)
    pids = []
    for ctr_id in sorted(ids):
        procs = (base / ctr_id / "cgroup.procs").read_text().split()
        # the first started, not the lowest pid: after a pid wraparound a short-lived child
        # (the gating loop's sleep) can have a lower pid than the container's main process
        started = {int(p): t for p in procs if (t := _start_time(int(p))) is not None}
        pids.append(min(started, key=lambda p: (started[p], p)))
    return pids


def _start_time(pid: int) -> int | None:
    """Clock ticks since boot at which the process started (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # ended meanwhile
    return int(stat.rsplit(")", 1)[1].split()[19])


def sandbox_pid(node: Node, pod: Any) -> int:
    """A process in the pod's network namespace: the sandbox's (pause)."""
    base = pod_cgroup(node, pod)
    ids = container_ids(pod)
    for d in base.iterdir():
        if d.is_dir() and d.name not in ids:
            procs = (d / "cgroup.procs").read_text().split()
            if procs:
                return int(procs[0])
    raise AssertionError(f"no sandbox process for pod {pod['metadata']['name']}")


def in_netns(pid: int, *argv: str) -> str:
    proc = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nsenter {pid} {' '.join(argv)}: {proc.stderr}")
    return proc.stdout


def host_veth(pid: int) -> str:
    """The host side of the pod's eth0 (its peer's interface index, found in the host)."""
    # (ip, not /sys: sysfs shows the namespace of whoever mounted it, the host's)
    (link,) = json.loads(in_netns(pid, "ip", "-j", "link", "show", "eth0"))
    ifindex = int(link["link_index"])
    for dev in os.listdir("/sys/class/net"):
        try:
            if int(Path(f"/sys/class/net/{dev}/ifindex").read_text()) == ifindex:
                return dev
        except OSError:
            continue
    raise AssertionError(f"no host interface with index {ifindex}")


def veth_counters(dev: str) -> dict[str, int]:
    stats = Path(f"/sys/class/net/{dev}/statistics")
    return {k: int((stats / k).read_text()) for k in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")}


def mac_in(pid: int) -> str:
    (link,) = json.loads(in_netns(pid, "ip", "-j", "link", "show", "eth0"))
    return str(link["address"])


def quiet_links(node: Node, pods: dict[str, tuple[int, str, str]], gateway: str) -> None:
    """No frame but IP on the pods' interfaces from now on: permanent neighbours (pods, the
    gateway, and the host's for each pod) instead of ARP, and no IPv6 (no neighbour
    discovery, no MLD). ``pods``: name -> (sandbox pid, IP, MAC)."""
    gw_mac = Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip()
    for pid, _, _ in pods.values():
        in_netns(pid, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.eth0.disable_ipv6=1")
        in_netns(pid, "ip", "neigh", "replace", gateway, "lladdr", gw_mac, "dev", "eth0", "nud", "permanent")
        for other_pid, ip, mac in pods.values():
            if other_pid != pid:
                in_netns(pid, "ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent")
    for _, ip, mac in pods.values():
        subprocess.run(
            ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", BRIDGE, "nud", "permanent"], check=True, timeout=30
        )


def go(pid: int, what: str = "go") -> None:
    """Start a client waiting for /tmp/go in its container, or let it end (``done``);
    see ``GATED``."""
    Path(f"/proc/{pid}/root/tmp/{what}").write_text("")


#: A container command that waits for ``go`` before it runs the workload's arguments,
#: and for ``done`` before it exits (so its interface is still there to be read).
GATED = [
    "sh",
    "-c",
    'while [ ! -e /tmp/go ]; do sleep 0.1; done; python3 /usr/local/bin/podnet-workload "$@"; rc=$?;'
    " while [ ! -e /tmp/done ]; do sleep 0.1; done; exit $rc",
    "--",
]


def last_report(node: Node, ns: str, pod: str, container: str | None = None) -> dict[str, int]:
    """The last JSON line the workload printed (its totals)."""
    args = ["logs", "-n", ns, pod] + (["-c", container] if container else [])
    lines = [line for line in node.kubectl(*args).splitlines() if line.startswith("{")]
    assert lines, f"{ns}/{pod} {container or ''} reported nothing"
    out: dict[str, int] = json.loads(lines[-1])
    return out


def wait_report(node: Node, ns: str, pod: str, key: str, value: int, container: str | None = None) -> dict[str, int]:
    """Until the workload's last report has ``key`` == ``value``."""
    got: dict[str, int] = {}

    def check() -> bool:
        nonlocal got
        try:
            got = last_report(node, ns, pod, container)
        except (AssertionError, RuntimeError):
            return False
        return got.get(key) == value

    try:
        node.wait(check, 120, f"{ns}/{pod} to report {key}={value}")
    except TimeoutError:
        raise AssertionError(f"{ns}/{pod}: last report {got}, expected {key}={value}") from None
    return got


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
