"""``otel-podnet check``: is this node ready for the agent? One line per item, with a fix."""

from __future__ import annotations

import ctypes
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import abi, libbpf
from .capacity import Capacity
from .cgroups import CgroupError, find_cgroup2_mount
from .datapath import PROGRAMS_CGROUP, PROGRAMS_TRACING, AbiMismatch, Datapath, DatapathConfig, default_object_path
from .settings import ConfigError, parse_max_pods

# The kernel matrix (tests/matrix: Debian's 6.1 and 6.12 under QEMU) and CI's own kernel
# prove 6.1 and newer. Below 5.12 the verifier refuses the BPF atomics (fetch-and-or,
# compare-and-swap) the programs use; 5.12 to 6.0 (5.15 above all) are expected to work
# but are not proven.
MIN_KERNEL = (6, 1)
MIN_LOADABLE = (5, 12)

# capability bits (linux/capability.h)
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    warn: bool = False  # ready, but a feature is degraded on this node

    def line(self) -> str:
        mark = ("warn" if self.warn else "ok  ") if self.ok else "FAIL"
        return f"{mark} {self.name:<12} {self.detail}" + ("" if self.ok or not self.hint else f" -> {self.hint}")


def _kernel(rel: str | None = None) -> CheckResult:
    rel = rel or platform.release()
    m = re.match(r"(\d+)\.(\d+)", rel)
    ver = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    need = f"needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer"
    if ver >= MIN_KERNEL:
        return CheckResult("kernel", True, f"Linux {rel}")
    if ver >= MIN_LOADABLE:
        return CheckResult("kernel", True, f"Linux {rel}: expected to work, not proven ({need} to be)", warn=True)
    return CheckResult("kernel", False, f"Linux {rel}", need)


def _btf(sysfs: Path) -> CheckResult:
    p = sysfs / "kernel/btf/vmlinux"
    ok = p.is_file()
    return CheckResult("btf", ok, str(p) if ok else f"{p} missing", "needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def _cgroup(root: Path | None, proc: Path) -> tuple[CheckResult, Path | None]:
    try:
        found = root or find_cgroup2_mount(proc / "self/mountinfo")
    except CgroupError as exc:
        return CheckResult("cgroup2", False, str(exc), "mount cgroup v2 or pass --cgroup-root"), None
    ok = (found / "cgroup.procs").exists()
    return CheckResult("cgroup2", ok, f"cgroup v2 at {found}", f"{found} is not a cgroup v2 mount"), found


def _caps(proc: Path) -> CheckResult:
    try:
        text = (proc / "self/status").read_text()
        eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)", text, re.M).group(1), 16)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return CheckResult("privileges", False, "cannot read CapEff", "run as root with BPF, PERFMON, NET_ADMIN")

    def have(bit: int) -> bool:
        return bool(eff >> bit & 1)

    bpf = have(CAP_BPF) or have(CAP_SYS_ADMIN)
    perfmon = have(CAP_PERFMON) or have(CAP_SYS_ADMIN)
    netadmin = have(CAP_NET_ADMIN)
    missing = [n for n, ok in (("CAP_BPF", bpf), ("CAP_PERFMON", perfmon), ("CAP_NET_ADMIN", netadmin)) if not ok]
    detail = "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN" if not missing else "missing " + ", ".join(missing)
    return CheckResult("privileges", not missing, detail, "add the capabilities " + ", ".join(missing))


def _libbpf() -> CheckResult:
    try:
        v = libbpf.version()
    except OSError as exc:
        return CheckResult("libbpf", False, str(exc), "apt-get install libbpf1")
    major, minor = (int(x) for x in v.split("."))
    ok = (major, minor) >= (1, 0)
    return CheckResult("libbpf", ok, f"libbpf {v}", "needs libbpf 1.0 or newer")


def _tracefs() -> CheckResult:
    return CheckResult("tracefs", True, "not needed: tracepoints attach as BTF raw tracepoints (tp_btf)")


def _limits(max_pods: int) -> CheckResult:
    """The kernel tables' sizes for this node, and what podnet_stats costs on its CPUs."""
    cap = Capacity.for_pods(max_pods)
    try:
        cpus = libbpf.num_possible_cpus()
    except OSError as exc:
        return CheckResult("limits", False, str(exc), "apt-get install libbpf1")
    mib = cap.stats_bytes(cpus, ctypes.sizeof(abi.PodnetCounters)) / 2**20
    return CheckResult(
        "limits",
        True,
        f"sized for {max_pods} pods: {cap.slots} slots ({mib:.1f} MiB on {cpus} possible CPUs), "
        f"{cap.cgroups} cgroups, {cap.pod_ips} pod IPs",
    )


def _hooks(cgroup_root: Path | None, obj: Path, capacity: Capacity) -> list[CheckResult]:
    if not obj.is_file():
        return [
            CheckResult(
                "bpf-object", False, f"{obj} missing", "reinstall the package (pip install .) with clang present"
            )
        ]
    out = [CheckResult("bpf-object", True, str(obj))]
    if cgroup_root is None:
        return [*out, CheckResult("hooks", False, "not tried: no cgroup v2", "fix the cgroup2 line first")]
    dp = Datapath(DatapathConfig(cgroup_root, obj, capacity=capacity))
    try:
        dp.open_and_load()
        out.append(CheckResult("abi", True, "every map and global matches otel_podnet/abi.py"))
        loaded = len(PROGRAMS_TRACING) + len(PROGRAMS_CGROUP) + (1 if dp.kernel_sums else 0)
        out.append(CheckResult("verifier", True, f"all {loaded} programs load"))
        if dp.degraded:
            # a cost (issue 10: the per-CPU sums done in user space) loses no metric
            out += [CheckResult("cost" if d.cost else "degraded", True, d.line(), warn=True) for d in dp.degraded]
        else:
            out.append(CheckResult("features", True, "none degraded on this kernel"))
        dp.attach()
        out.append(
            CheckResult(
                "hooks",
                True,
                "attached and detached: cgroup_skb ingress/egress, tp_btf inet_sock_set_state, "
                "tcp_retransmit_skb, tcp_retransmit_synack, tcp_send_reset, tcp_receive_reset, cgroup_rmdir",
            )
        )
    except AbiMismatch as exc:
        out.append(CheckResult("abi", False, exc.strerror or str(exc), "reinstall the package (pip install .)"))
    except OSError as exc:
        what = "hooks" if dp.loaded else "verifier"
        out.append(
            CheckResult(
                what, False, str(exc), "see the log above; kernel needs cgroup BPF, BTF raw tracepoints, sk_storage"
            )
        )
    finally:
        dp.close()
    return out


def run_checks(
    cgroup_root: Path | None = None,
    proc: Path = Path("/proc"),
    sysfs: Path = Path("/sys"),
    object_path: Path | None = None,
) -> list[CheckResult]:
    cg, found = _cgroup(cgroup_root, proc)
    results = [_kernel(), _btf(sysfs), cg, _tracefs(), _caps(proc), _libbpf()]
    try:
        max_pods = parse_max_pods(None, os.environ)
    except ConfigError as exc:
        results.append(CheckResult("limits", False, str(exc), "set PODNET_MAX_PODS to the node's --max-pods"))
        max_pods = 0
    if max_pods and results[-1].ok:
        results.append(_limits(max_pods))
    if all(r.ok for r in results):
        results += _hooks(found, object_path or default_object_path(), Capacity.for_pods(max_pods))
    else:
        results.append(CheckResult("hooks", False, "not tried", "fix the lines above first"))
    return results


def main(print_fn: Callable[[str], None] = print, cgroup_root: Path | None = None) -> int:
    results = run_checks(cgroup_root)
    for r in results:
        print_fn(r.line())
    ok = all(r.ok for r in results)
    print_fn("ready" if ok else "not ready")
    return 0 if ok else 3


if os.name != "posix":  # pragma: no cover
    raise ImportError("otel-podnet runs on Linux only")
