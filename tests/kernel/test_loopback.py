"""Loopback is not network traffic: connections over lo (127.0.0.1, or a pod's own IP,
which the kernel also routes over lo) are counted nowhere, while real flows beside them
are counted exactly once on each side: pod to pod, pod to node and node to pod."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from otel_podnet.samples import Counters
from otel_podnet.simnode import SimNode, SimPod

from .conftest import Agent


@dataclass
class Flow:
    """A TCP server and its client, running: ``count`` connections, ``send`` bytes from
    the client and ``recv`` bytes back on each."""

    server: subprocess.Popen[str]
    client: subprocess.Popen[str]
    count: int
    send: int
    recv: int

    def finish(self, node: SimNode) -> None:
        c = self.count
        assert node.result(self.client) == {"connected": c, "sent": c * self.send, "received": c * self.recv}
        assert node.result(self.server) == {"accepted": c, "received": c * self.send, "sent": c * self.recv}


def flow(
    node: SimNode, client: SimPod | None, server: SimPod | None, addr: str, port: int, count: int, send: int, recv: int
) -> Flow:
    srv = node.workload(server, "tcp-server", addr=addr, port=port, count=count, recv=send, send=recv)
    node.wait_ready(srv)
    cli = node.workload(client, "tcp-client", addr=addr, port=port, count=count, send=send, recv=recv)
    return Flow(srv, cli, count, send, recv)


def conns(c: Counters) -> tuple[int, int, int, int, int, int]:
    return c.opened_out, c.opened_in, c.closed_out, c.closed_in, c.adopted_out, c.adopted_in


def wire(c: Counters) -> tuple[int, int, int, int]:
    return c.bytes_tx_tcp, c.packets_tx_tcp, c.bytes_rx_tcp, c.packets_rx_tcp


def mirrored(c: Counters) -> tuple[int, int, int, int]:
    """What the peer of ``c`` must have seen when it talked to nothing else."""
    return c.bytes_rx_tcp, c.packets_rx_tcp, c.bytes_tx_tcp, c.packets_tx_tcp


def no_events(c: Counters) -> tuple[int, ...]:
    return (sum(c.failed.values()), c.resets_tx, c.resets_rx)


def test_same_pod_loopback_counted_nowhere_beside_a_real_flow(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    a, b = node.add_pod("app", ipv6=True), node.add_pod("peer")
    agent = start_agent()
    assert a.ip6
    # an application and its sidecar over 127.0.0.1 and ::1, and connections to the pod's
    # own IPv4 and IPv6 addresses
    udp_rcv = node.workload(a, "udp-recv", addr="127.0.0.1", port=6102, count=100)
    node.wait_ready(udp_rcv)
    udp = node.workload(a, "udp-send", addr="127.0.0.1", port=6102, count=100, size=512)
    flows = [
        flow(node, a, a, "127.0.0.1", 6100, 5, 100_000, 5_000),
        flow(node, a, a, a.ip4, 6101, 5, 100_000, 5_000),
        flow(node, a, a, "::1", 6105, 4, 50_000, 1_000),
        flow(node, a, a, a.ip6, 6106, 4, 50_000, 1_000),
        flow(node, a, b, b.ip4, 6104, 3, 30_000, 3_000),  # the real flow, beside them
    ]
    refused = node.workload(a, "connect-fail", addr="127.0.0.1", port=6103, count=3)
    assert node.result(udp) == {"sent": 100, "bytes": 51_200}
    assert node.result(udp_rcv) == {"received": 100, "bytes": 51_200}
    for f in flows:
        f.finish(node)
    assert node.result(refused) == {"ECONNREFUSED": 3}

    ca = agent.settle(a, lambda c: c.closed_out == 3 and c.payload_rx == 9_000)
    cb = agent.settle(b, lambda c: c.closed_in == 3 and c.payload_rx == 90_000)
    assert conns(ca) == (3, 0, 3, 0, 0, 0)
    assert conns(cb) == (0, 3, 0, 3, 0, 0)
    assert (ca.payload_tx, ca.payload_rx, cb.payload_tx, cb.payload_rx) == (90_000, 9_000, 9_000, 90_000)
    assert (ca.bytes_tx_udp, ca.packets_tx_udp, ca.bytes_rx_udp, ca.packets_rx_udp) == (0, 0, 0, 0)
    assert no_events(ca) == no_events(cb) == (0, 0, 0)
    # b talked only to a: what a sent and received on the network is exactly b's mirror
    assert wire(ca) == mirrored(cb)
    assert ca.bytes_tx_tcp > 90_000  # the payload and its headers: the real flow is counted


def test_pod_to_node_and_node_to_pod(node: SimNode, start_agent: Callable[[], Agent]) -> None:
    p = node.add_pod("pod")
    h = node.add_pod("hostnet", host_network=True)  # the node's side, in a cgroup of its own
    agent = start_agent()
    flows = [
        flow(node, p, h, node.node_ip4, 6110, 2, 20_000, 2_000),  # pod to node
        flow(node, h, p, p.ip4, 6111, 4, 40_000, 4_000),  # node to pod
        flow(node, h, h, node.node_ip4, 6112, 3, 7_000, 700),  # node to itself: loopback
        flow(node, h, h, "127.0.0.1", 6113, 3, 7_000, 700),
    ]
    for f in flows:
        f.finish(node)
    # to the node: 2 x 20,000 out, 2 x 2,000 back; from the node: 4 x 40,000 in, 4 x 4,000 back
    cp = agent.settle(p, lambda c: c.closed_out == 2 and c.closed_in == 4 and c.payload_rx == 4_000 + 160_000)
    ch = agent.settle(h, lambda c: c.closed_out == 4 and c.closed_in == 2 and c.payload_rx == 40_000 + 16_000)
    assert conns(cp) == (2, 4, 2, 4, 0, 0)
    assert conns(ch) == (4, 2, 4, 2, 0, 0)
    assert (cp.payload_tx, cp.payload_rx) == (40_000 + 16_000, 4_000 + 160_000)
    assert (ch.payload_tx, ch.payload_rx) == (4_000 + 160_000, 40_000 + 16_000)
    assert no_events(cp) == no_events(ch) == (0, 0, 0)
    assert wire(ch) == mirrored(cp)
