/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * podnet_kernel.h: the few kernel types the programs read, declared for CO-RE.
 *
 * Instead of a generated multi-megabyte vmlinux.h, only the fields we read are declared,
 * with preserve_access_index: libbpf relocates every access against the running kernel's
 * BTF at load time, so field offsets here do not matter and the build needs no kernel BTF.
 */
#ifndef __PODNET_KERNEL_H
#define __PODNET_KERNEL_H

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)


struct kernfs_node {
	__u64 id;
};

struct cgroup_root {
	int hierarchy_id;		/* 0: the default (v2) hierarchy */
};

struct cgroup {
	struct kernfs_node *kn;
	struct cgroup_root *root;
};

struct sock_cgroup_data {
	struct cgroup *cgroup;		/* v5.15+, see compat.h */
};

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct net_device {
	int ifindex;
};

struct dst_entry {
	struct net_device *dev;
};

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	__u16 sk_protocol;		/* a bitfield before v5.6, see compat.h */
	struct sock_cgroup_data sk_cgrp_data;
	struct dst_entry *sk_dst_cache;
};

struct tcp_sock {
	__u32 rcv_nxt;
	__u32 srtt_us;			/* smoothed RTT << 3, in microseconds */
	__u32 total_retrans;		/* segments retransmitted, as RetransSegs counts them */
};

struct request_sock {
	struct sock_common __req_common;
};

struct sk_buff {
	unsigned char *head;
	__u32 end;			/* an offset from head on 64-bit kernels */
	__u16 network_header;
	__be16 protocol;
	int skb_iif;
};

struct skb_shared_info {
	__u16 gso_segs;
};

#pragma clang attribute pop

#endif /* __PODNET_KERNEL_H */
