"""Feature probes: a kernel without the probed type degrades exactly that feature, with
the reason in one line; a kernel with it degrades nothing."""

from __future__ import annotations

from otel_podnet import libbpf
from otel_podnet.features import CLOSED_PORT_RESETS, probe


def test_before_6_10_closed_port_resets_are_degraded_with_the_reason() -> None:
    asked: list[tuple[str, tuple[int, ...]]] = []

    def has_type(name: str, kinds: tuple[int, ...]) -> bool:
        asked.append((name, kinds))
        return False

    (d,) = probe(has_type)
    assert asked == [("sk_rst_reason", (libbpf.BTF_KIND_ENUM, libbpf.BTF_KIND_ENUM64))]
    assert d.feature == CLOSED_PORT_RESETS
    assert d.line() == (
        "closed-port resets not attributed: kernel < 6.10, whose tcp:tcp_send_reset fires for full sockets only "
        "(probe: no enum sk_rst_reason in the kernel's BTF)"
    )


def test_from_6_10_nothing_is_degraded() -> None:
    assert probe(lambda name, kinds: True) == ()
