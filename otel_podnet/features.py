"""What the running kernel can and cannot give, probed (never read off the version number).

Each feature the programs degrade without is probed through the kernel's BTF, as CO-RE
does, or by letting libbpf try the helper a program needs; a missing one is a
:class:`Degraded` with the reason, which `otel-podnet check` prints and the agent logs at
start-up. Nothing here stops the object from loading: the programs stay the same on every
kernel, only what they can see differs, and a program the kernel cannot run (podnet_sum)
is left out of the load, its work done in user space instead (a cost, no metric lost).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import libbpf

CLOSED_PORT_RESETS = "closed-port resets not attributed"
USERSPACE_SUMS = "per-CPU counters summed in user space (collection cost grows with the CPUs)"


@dataclass(frozen=True)
class Degraded:
    feature: str  # what the agent cannot report, e.g. CLOSED_PORT_RESETS
    reason: str  # why: the kernel behaviour and the probe that found it
    cost: bool = False  # nothing is lost, it only costs more (USERSPACE_SUMS)

    def line(self) -> str:
        return f"{self.feature}: {self.reason}"


HasType = Callable[[str, tuple[int, ...]], bool]
HasHelper = Callable[[int, int], bool]  # (BPF program type, helper id)
POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


def _possible_cpus() -> str:
    return POSSIBLE_CPUS.read_text()


def probe(
    has_type: HasType = libbpf.kernel_btf_has_type,
    has_helper: HasHelper = libbpf.kernel_has_helper,
    possible_cpus: Callable[[], str] = _possible_cpus,
) -> tuple[Degraded, ...]:
    """The features this kernel degrades, by probing its BTF with ``has_type`` and its
    helpers with ``has_helper``."""
    out = []
    # tcp:tcp_send_reset fires for resets sent on behalf of no socket (a closed port) only
    # from v6.10, commit 19822a980e19 ("trace: tcp: fully support trace_tcp_send_reset").
    # The same release gave the tracepoint its reset reason, enum sk_rst_reason ("net:
    # introduce rstreason to detect why the RST is sent"): its presence in the kernel's BTF
    # is the probe.
    if not has_type("sk_rst_reason", (libbpf.BTF_KIND_ENUM, libbpf.BTF_KIND_ENUM64)):
        out.append(
            Degraded(
                CLOSED_PORT_RESETS,
                "kernel < 6.10, whose tcp:tcp_send_reset fires for full sockets only "
                "(probe: no enum sk_rst_reason in the kernel's BTF)",
            )
        )
    sums = kernel_sums_missing(has_helper, possible_cpus)
    if sums:
        out.append(Degraded(USERSPACE_SUMS, sums, cost=True))
    return tuple(out)


def kernel_sums_missing(has_helper: HasHelper, possible_cpus: Callable[[], str]) -> str:
    """Why podnet_sum (bpf/podnet.bpf.c) cannot run here, or "" when it can. It is a
    BPF_PROG_TYPE_SYSCALL program (5.14) looping with bpf_loop (5.17) over every CPU's copy
    of a row through bpf_map_lookup_percpu_elem (5.19): each probed as libbpf does, by
    loading a program of that type that calls the helper. It visits CPUs 0 to n-1 for the
    n possible CPUs, so those must be numbered without gaps, as they almost always are."""
    helpers = {"bpf_loop": libbpf.BPF_FUNC_loop, "bpf_map_lookup_percpu_elem": libbpf.BPF_FUNC_map_lookup_percpu_elem}
    missing = [name for name, helper in helpers.items() if not has_helper(libbpf.BPF_PROG_TYPE_SYSCALL, helper)]
    if missing:
        return (
            f"the kernel lets no BPF_PROG_TYPE_SYSCALL program call {' or '.join(missing)} "
            "(Linux < 5.19; probe: libbpf_probe_bpf_helper)"
        )
    possible = possible_cpus().strip()
    if not re.fullmatch(r"0(-\d+)?", possible):
        return f"the possible CPUs are not numbered 0 to n-1 ({POSSIBLE_CPUS}: {possible})"
    return ""
