"""How big the kernel's tables are: sized from the node at load time.

``podnet_stats`` is a per-CPU array: each slot costs its counters' size on every possible
CPU, so it is sized for the pods the node can run, not for the largest node imaginable.
The formula (README "Memory", Helm value ``maxPods``):

* slots = 4 x max_pods + 64 + 1. A pod needs two: one shared by all its cgroups and one
  for its IP fallback. x2 for churn: a pod that leaves keeps its slots one more round
  while its replacement takes new ones, and a new container's cgroup holds a slot of its
  own until the agent merges it into its pod's. +64 for other new cgroups (sessions, cron
  jobs), each holding a slot from its first packet until the agent classifies it. +1: the
  node's slot.
* cgroups = 16 x max_pods + 8192: up to 8 cgroups per pod (pod, pause, containers, init
  containers) x2 for churn, plus the node's own cgroups.
* pod IPs = 4 x max_pods + 16: two per pod (dual stack) x2 for IPs of pods terminating.
* peer rows (issue 12) = 8 x max_pods + 128: one per (slot, remote address) that carried
  traffic lately (idle rows are freed after three intervals), so 8 distinct remote
  addresses per pod at a time on a full node, more where some pods talk to fewer; each row
  costs ``podnet_peer_counters`` (72 bytes) on every possible CPU, and so does one overflow
  row per slot: 110 pods on 128 CPUs, (505 + 1008) x 72 x 128 = 13.9 MB.
  Beyond it, a pod's traffic to remotes that found no row is counted in its slot's overflow
  row (reported as ``podnet.peer.kind=other``, totals exact) and in
  ``podnet.agent.map.full{podnet.map=peers}``.

A table that fills up anyway is reported (``podnet.agent.slots.exhausted``,
``podnet.agent.map.full``), and a pod that could not get a slot gets one when one frees.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_PODS = 110  # kubelet's default --max-pods
MAX_MAX_PODS = 10_000


@dataclass(frozen=True)
class Capacity:
    slots: int  # podnet_stats rows, the node's slot 0 included
    cgroups: int  # podnet_cgroups entries
    pod_ips: int  # podnet_pod_ips entries
    peer_rows: int = 8 * DEFAULT_MAX_PODS + 128  # allocatable podnet_peer_stats rows (issue 12)

    @classmethod
    def for_pods(cls, max_pods: int = DEFAULT_MAX_PODS) -> Capacity:
        return cls(
            slots=4 * max_pods + 64 + 1,
            cgroups=16 * max_pods + 8192,
            pod_ips=4 * max_pods + 16,
            peer_rows=8 * max_pods + 128,
        )

    def stats_bytes(self, possible_cpus: int, counters_size: int) -> int:
        """Memory of podnet_stats: every slot's counters on every possible CPU (each
        per-CPU value rounded up to 8 bytes, as the kernel stores it)."""
        return self.slots * possible_cpus * ((counters_size + 7) // 8 * 8)

    def peer_bytes(self, possible_cpus: int, row_size: int) -> int:
        """Memory of podnet_peer_stats (issue 12): the slots' overflow rows and the peer rows
        on every possible CPU."""
        return (self.slots + self.peer_rows) * possible_cpus * ((row_size + 7) // 8 * 8)


DEFAULT_CAPACITY = Capacity.for_pods()
