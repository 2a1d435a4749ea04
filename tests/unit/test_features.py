"""Feature probes: a kernel without the probed type degrades exactly that feature, with
the reason in one line; a kernel without a helper podnet_sum needs costs more, loses
nothing; a kernel with everything degrades nothing."""

from __future__ import annotations

from otel_podnet import libbpf
from otel_podnet.features import CLOSED_PORT_RESETS, USERSPACE_SUMS, probe


def every_helper(prog_type: int, helper: int) -> bool:
    return True


def contiguous() -> str:
    return "0-63\n"


def test_before_6_10_closed_port_resets_are_degraded_with_the_reason() -> None:
    asked: list[tuple[str, tuple[int, ...]]] = []

    def has_type(name: str, kinds: tuple[int, ...]) -> bool:
        asked.append((name, kinds))
        return False

    (d,) = probe(has_type, every_helper, contiguous)
    assert asked == [("sk_rst_reason", (libbpf.BTF_KIND_ENUM, libbpf.BTF_KIND_ENUM64))]
    assert d.feature == CLOSED_PORT_RESETS and not d.cost
    assert d.line() == (
        "closed-port resets not attributed: kernel < 6.10, whose tcp:tcp_send_reset fires for full sockets only "
        "(probe: no enum sk_rst_reason in the kernel's BTF)"
    )


def test_from_6_10_nothing_is_degraded() -> None:
    assert probe(lambda name, kinds: True, every_helper, contiguous) == ()
    assert probe(lambda name, kinds: True, every_helper, lambda: "0\n") == ()  # one CPU


def test_without_the_helpers_the_per_cpu_sums_are_a_cost_in_user_space() -> None:
    asked: list[tuple[int, int]] = []

    def before_5_19(prog_type: int, helper: int) -> bool:
        asked.append((prog_type, helper))
        return helper != libbpf.BPF_FUNC_map_lookup_percpu_elem

    (d,) = probe(lambda name, kinds: True, before_5_19, contiguous)
    assert asked == [
        (libbpf.BPF_PROG_TYPE_SYSCALL, libbpf.BPF_FUNC_loop),
        (libbpf.BPF_PROG_TYPE_SYSCALL, libbpf.BPF_FUNC_map_lookup_percpu_elem),
    ]
    assert d.feature == USERSPACE_SUMS and d.cost
    assert d.line() == (
        "per-CPU counters summed in user space (collection cost grows with the CPUs): the kernel lets no "
        "BPF_PROG_TYPE_SYSCALL program call bpf_map_lookup_percpu_elem (Linux < 5.19; probe: libbpf_probe_bpf_helper)"
    )
    (d,) = probe(lambda name, kinds: True, lambda prog_type, helper: False, contiguous)
    assert "call bpf_loop or bpf_map_lookup_percpu_elem (" in d.reason


def test_possible_cpus_with_a_gap_are_summed_in_user_space() -> None:
    (d,) = probe(lambda name, kinds: True, every_helper, lambda: "0-3,8-11\n")
    assert d.feature == USERSPACE_SUMS and d.cost
    assert d.reason == "the possible CPUs are not numbered 0 to n-1 (/sys/devices/system/cpu/possible: 0-3,8-11)"
