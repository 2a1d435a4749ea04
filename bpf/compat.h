/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * compat.h: every kernel-version difference the programs care about, in one place.
 * Each shim names the kernel commit whose layout change it tracks. The minimum kernel is
 * v5.11 (sk_storage from BTF tracepoints, 8e4597c627fb); older layouts below that are not
 * handled here on purpose.
 */
#ifndef __PODNET_COMPAT_H
#define __PODNET_COMPAT_H

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "podnet_kernel.h"

/*
 * struct sock_cgroup_data lost its packed u64 union in v5.15,
 * commit 8520e224f547 ("bpf, cgroups: Fix cgroup v2 fallback on v1/v2 mixed mode").
 * Before it, .val held the cgroup pointer unless one of its two low bits was set: bit 0
 * (is_data) when net_cls/net_prio v1 were in use, and from v5.8 (v5.7 stable), commit
 * ad0f75e5f57c ("cgroup: fix cgroup_sk_alloc() for sk_clone_lock()"), bit 1 (no_refcnt)
 * when cgroup socket accounting was disabled. The kernel then takes the v2 root
 * (sock_cgroup_ptr() tests `val & 3`), so do we: 0, the node's, never a tagged pointer.
 */
struct sock_cgroup_data___old {
	union {
		struct {
			__u8 is_data : 1;
		};
		__u64 val;
	};
} __attribute__((preserve_access_index));

static __always_inline __u64 podnet_sk_cgroup_id(const struct sock *sk)
{
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		/* direct (relocated) reads: every caller holds a BTF pointer (tp_btf); issue 10 */
		struct cgroup *cg = sk->sk_cgrp_data.cgroup;
		struct kernfs_node *kn = cg ? cg->kn : NULL;

		return kn ? kn->id : 0;
	}

	struct sock_cgroup_data___old *old = (void *)&sk->sk_cgrp_data;
	__u64 val = BPF_CORE_READ(old, val);
	if (val & 3)
		return 0;
	return BPF_CORE_READ((struct cgroup *)(unsigned long)val, kn, id);
}

/*
 * sk_protocol was an 8-bit bitfield until v5.6, commit bf9765145b85
 * ("sock: Make sk_protocol a 16-bit value"); the relocated bitfield read handles both.
 */
static __always_inline __u32 podnet_sk_protocol(const struct sock *sk)
{
	/* a direct (relocated) read: every caller holds a BTF pointer (tp_btf); issue 10 */
	return BPF_CORE_READ_BITFIELD(sk, sk_protocol);
}

/*
 * The peer port of a cgroup_skb socket. A 16-bit load of bpf_sock->dst_port is accepted
 * only from v5.18, commit 4421a582718a ("bpf: Make dst_port field in struct bpf_sock
 * 16-bit wide"); before it the verifier rejects the program, and with it the whole object.
 * A 32-bit load is accepted by every kernel (v5.18 kept it for compatibility), and the
 * kernel rewrites it into a load of the 16-bit skc_dport, zero-extended: the low 16 bits
 * are the port in network order. volatile keeps clang from narrowing the load.
 */
static __always_inline __u16 podnet_bpf_sock_dport(const struct bpf_sock *sk)
{
	__u32 wide = *(volatile const __u32 *)&sk->dst_port;

	return bpf_ntohs((__u16)wide);
}

#endif /* __PODNET_COMPAT_H */
