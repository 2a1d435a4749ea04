"""What the running kernel can and cannot give, probed (never read off the version number).

Each feature the programs degrade without is probed through the kernel's BTF, as CO-RE
does; a missing one is a :class:`Degraded` with the reason, which `otel-podnet check`
prints and the agent logs at start-up. Nothing here stops the object from loading: the
programs themselves stay the same on every kernel, only what they can see differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import libbpf

CLOSED_PORT_RESETS = "closed-port resets not attributed"


@dataclass(frozen=True)
class Degraded:
    feature: str  # what the agent cannot report, e.g. CLOSED_PORT_RESETS
    reason: str  # why: the kernel behaviour and the probe that found it

    def line(self) -> str:
        return f"{self.feature}: {self.reason}"


HasType = Callable[[str, tuple[int, ...]], bool]


def probe(has_type: HasType = libbpf.kernel_btf_has_type) -> tuple[Degraded, ...]:
    """The features this kernel degrades, by probing its BTF with ``has_type``."""
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
    return tuple(out)
