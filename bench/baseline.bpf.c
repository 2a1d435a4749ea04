// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * baseline.bpf.c: programs that do nothing, on the same hooks as podnet.bpf.c.
 *
 * The benchmark runs them through the same transfer to measure what bpf_stats itself
 * charges per run on this machine (two clock reads, and any interrupt that lands inside a
 * process-context run), so the datapath's figures can be read against it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("cgroup_skb/ingress")
int podnet_base_in(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/egress")
int podnet_base_eg(struct __sk_buff *skb)
{
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(podnet_base_st, const void *sk, const int oldstate, const int newstate)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
