// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * podnet.bpf.c: per-pod TCP connections and IP traffic, counted in the kernel.
 *
 * Design decisions:
 * - Stable hooks only: cgroup_skb ingress/egress on the cgroup v2 root see every packet
 *   of every local socket exactly once (never a bridge or a veth twice), with the socket
 *   attached. TCP state and events come from the tracepoints sock:inet_sock_set_state,
 *   tcp:tcp_retransmit_skb, tcp:tcp_send_reset and tcp:tcp_receive_reset, attached as BTF
 *   raw tracepoints (tp_btf): typed arguments, no tracefs, and sk_storage is usable there.
 * - Attribution is resolved once per socket, not per packet: the socket's cgroup id maps
 *   to a slot (a row of counters) in podnet_cgroups; a cgroup seen for the first time takes
 *   a free slot from the podnet_freeslot queue at once, so nothing is lost before the
 *   agent has classified it. Sockets of cgroups that are not a pod's fall back to their
 *   local address in podnet_pod_ips. The result is cached in socket storage together with
 *   podnet_gen; the agent bumps podnet_gen after any remapping, which makes each socket
 *   resolve again on its next packet.
 * - Per packet: one socket-storage lookup, then inlined array accesses. Counters are
 *   per-CPU, updated with atomic adds: a softirq egress (an ACK, a retransmit) can interrupt
 *   a process-context egress on the same CPU, so a plain += could lose an update. The one
 *   exception (issue 10): the received bytes and packets, which only the ingress program
 *   writes. cgroup_skb ingress runs in the receive path (sk_filter() from tcp_v4_rcv(),
 *   udp_queue_rcv_one_skb(), ...), always with bottom halves off: two of its runs never
 *   overlap on one CPU, and nothing else writes those two fields, so plain adds are exact
 *   there and save two locked instructions per received packet (the kernel's own per-CPU
 *   counters on that path, __TCP_INC_STATS() in tcp_v4_rcv(), rely on the same).
 * - Bytes and packets are counted as on the wire: a GSO/GRO skb of n segments counts n
 *   packets and n copies of its IP+L4 headers. TCP payload is the skb minus its headers.
 * - The programs never drop: cgroup_skb always returns 1.
 * - Latency (connect duration, RTT) is kept as log2 histograms of microseconds in the same
 *   per-CPU slot rows, with an exact sum beside the buckets. Outbound connect duration is
 *   from the first SYN's departure (its skb->tstamp, stamped into socket storage by the
 *   egress program, which holds that storage anyway) to ESTABLISHED: exact, SYN
 *   retransmissions included, and no extra tracepoint run per connection. Inbound, the
 *   child socket never sees the SYN (it is created when the handshake's ACK arrives, and
 *   the request sock that saw the SYN is unreachable from it), so the kernel's own sample is
 *   taken: tcp_check_req() sets the child's srtt_us from the first SYN-ACK's send time to
 *   the ACK's arrival before the state changes; the SYN-ACK leaves in the softirq that took
 *   the SYN. RTT is the kernel's srtt_us: at the close (leaving ESTABLISHED), and on egress
 *   at most once per interval, checked against skb->tstamp (TCP's departure time, already
 *   in the skb: no helper call and no map lookup per packet).
 * - Loopback is not network traffic: packets on lo (127.0.0.1, ::1, or a connection to an
 *   address of the socket's own namespace, which the kernel also routes over lo) are
 *   skipped by their ifindex before anything else; the tracepoints skip sockets whose
 *   route leaves through lo, so such connections are never opened, closed or failed.
 * - Peers (issue 12): bytes, connections opened and failed per (slot, remote address) in
 *   rows of podnet_peer_stats, resolved with the slot and cached in the socket's storage
 *   for connected TCP sockets (one array access per packet, as for the slot); listeners
 *   and UDP look their row up per packet. A row is taken from a queue the agent fills, so
 *   the table is bounded; with none free the slot's overflow row counts the traffic, which
 *   the agent reports as kind=other: summed over peers, every figure equals the slot's.
 *   The remote address is the socket's: inside the pod's namespace a connection to a
 *   Service has the ClusterIP (kube-proxy translates it in the node's namespace), which the
 *   agent maps to the Service's backends. podnet_peer_rows = 0 turns all of it off.
 * - Exactly what the kernel counts: retransmits by the socket's tcp_sock.total_retrans
 *   (SYN-ACKs sent again through tcp:tcp_retransmit_synack), and two programs on each of
 *   the state and retransmit tracepoints, because the kernel skips a program whose
 *   tracepoint fires while it runs (see state_change).
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "podnet.h"
#include "podnet_kernel.h"
#include "compat.h"

#define TCP_ESTABLISHED	1
#define TCP_SYN_SENT	2
#define TCP_SYN_RECV	3
#define TCP_CLOSE	7
#define TCP_CLOSE_WAIT	8
#define TCP_LAST_ACK	9
#define TCP_LISTEN	10

/* States in which rcv_nxt is the peer's stream position (SYN seen, not a listener). */
static __always_inline bool rcv_nxt_valid(__u32 state)
{
	return state != TCP_SYN_SENT && state != TCP_SYN_RECV && state != TCP_CLOSE &&
	       state != TCP_LISTEN && state != BPF_TCP_NEW_SYN_RECV;
}

#define AF_INET		2
#define AF_INET6	10

#define ECONNRESET	104
#define ENETUNREACH	101
#define ETIMEDOUT	110
#define ECONNREFUSED	111
#define EHOSTUNREACH	113

#define SK_PASS		1
#define SOCK_RAW	3
#define LOOPBACK_IFINDEX	1	/* lo has this index in every network namespace */

/*
 * Ablations for bench/run.py, which builds copies of this object with -DPODNET_CUT=n to
 * show where the cost goes: 1, every program returns at once (the hooks alone: the
 * floor); 2, the programs stop once they hold the socket's storage (the rare events'
 * programs return at once); 3, no socket storage at all: the least a design without it
 * would do per packet and state change (nostorage_skb, nostorage_state; the rare events'
 * programs return at once). The shipped object has 0: the compiler removes every cut, and
 * what only cut 3 uses is not compiled in.
 */
#ifndef PODNET_CUT
#define PODNET_CUT 0
#endif
#define CUT_HOOKS	1
#define CUT_STORAGE	2
#define CUT_NOSTORAGE	3

const volatile struct podnet_config podnet_cfg = {
	.ephemeral_lo = 32768,
	.ephemeral_hi = 60999,
};

/* Rows of podnet_stats: the agent resizes the maps for the node before load and sets this. */
const volatile __u32 podnet_max_slots = PODNET_MAX_SLOTS;

/* Bumped by the agent after it changes podnet_cgroups or podnet_pod_ips. */
volatile __u32 podnet_gen;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PODNET_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct podnet_counters);
} podnet_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, PODNET_MAX_SLOTS);
	__type(value, __u32);
} podnet_freeslot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODNET_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct podnet_cgroup);
} podnet_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODNET_MAX_POD_IPS);
	__type(key, struct podnet_ip_key);
	__type(value, struct podnet_ip_val);
} podnet_pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct podnet_sock);
} podnet_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PODNET_NHEALTH);
	__type(key, __u32);
	__type(value, __u64);
} podnet_health SEC(".maps");

static __always_inline void health_inc(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&podnet_health, &which);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline struct podnet_counters *slot_counters(__u32 slot)
{
	return bpf_map_lookup_elem(&podnet_stats, &slot);
}

/* The slot of a cgroup; a cgroup never seen before takes a free slot right away. */
static __always_inline __u32 cgroup_slot(__u64 cgid, __u32 *kind)
{
	struct podnet_cgroup fresh = { .slot = PODNET_SLOT_NODE, .kind = PODNET_CG_UNKNOWN };
	struct podnet_cgroup *cg;
	__u32 slot;
	bool popped;

	cg = bpf_map_lookup_elem(&podnet_cgroups, &cgid);
	if (cg) {
		*kind = cg->kind;
		return cg->slot;
	}

	popped = bpf_map_pop_elem(&podnet_freeslot, &slot) == 0;
	if (popped)
		fresh.slot = slot;
	else
		health_inc(PODNET_H_SLOTS_EXHAUSTED);

	if (bpf_map_update_elem(&podnet_cgroups, &cgid, &fresh, BPF_NOEXIST) == 0) {
		if (popped)
			health_inc(PODNET_H_SLOTS_ALLOCATED);
		*kind = fresh.kind;
		return fresh.slot;
	}
	/* Another CPU inserted it first, or the map is full. */
	if (popped)
		bpf_map_push_elem(&podnet_freeslot, &slot, 0);
	cg = bpf_map_lookup_elem(&podnet_cgroups, &cgid);
	if (cg) {
		*kind = cg->kind;
		return cg->slot;
	}
	health_inc(PODNET_H_CGROUPS_FULL);
	*kind = PODNET_CG_HOST;
	return PODNET_SLOT_NODE;
}

/*
 * Resolve where a socket counts. The generation is read before the maps, so a remap that
 * races with us leaves an older generation in the storage and forces another resolve.
 */
static __always_inline __u32 resolve(struct podnet_sock *st, __u64 cgid,
				     const struct podnet_ip_key *local)
{
	__u32 gen = podnet_gen;
	__u32 kind, slot;

	slot = cgroup_slot(cgid, &kind);
	if (kind != PODNET_CG_POD && local) {
		struct podnet_ip_val *ip = bpf_map_lookup_elem(&podnet_pod_ips, local);

		if (ip)
			slot = ip->slot;
	}
	if (slot >= podnet_max_slots)
		slot = PODNET_SLOT_NODE;
	st->slot = slot;
	st->gen = gen;
	return slot;
}

static __always_inline void ip_key_v4(struct podnet_ip_key *key, __be32 addr)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->addr[10] = 0xff;
	key->addr[11] = 0xff;
	__builtin_memcpy(&key->addr[12], &addr, 4);
}

/* Direction of a connection established before we saw it, from its ports. */
static __always_inline bool guess_inbound(__u16 lport, __u16 rport)
{
	bool l_eph = lport >= podnet_cfg.ephemeral_lo && lport <= podnet_cfg.ephemeral_hi;
	bool r_eph = rport >= podnet_cfg.ephemeral_lo && rport <= podnet_cfg.ephemeral_hi;

	if (l_eph != r_eph)
		return r_eph;
	return lport < rport;
}

/* ---- latency (issue 11): connect duration and RTT histograms --------------------------- */

/* At most how often a long-lived connection's RTT is sampled while it sends (the agent's
 * export interval, set before load). */
const volatile __u64 podnet_rtt_interval_ns = 10000000000ULL;

/* The bucket of a value: the smallest i with ns <= 2^i us (see podnet.h). */
static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u64 x = (ns + 999) / 1000;	/* ns <= 2^i us  <=>  ceil(ns / 1000) <= 2^i */
	__u32 b = 1;

	if (x <= 1)
		return 0;
	x -= 1;				/* ceil(log2(x)) = floor(log2(x - 1)) + 1 */
	if (x >> 32) { b += 32; x >>= 32; }
	if (x >> 16) { b += 16; x >>= 16; }
	if (x >> 8) { b += 8; x >>= 8; }
	if (x >> 4) { b += 4; x >>= 4; }
	if (x >> 2) { b += 2; x >>= 2; }
	if (x >> 1) { b += 1; }
	return b < PODNET_HIST_BUCKETS ? b : PODNET_HIST_BUCKETS - 1;
}

static __always_inline void hist_add(struct podnet_hist *h, __u64 ns)
{
	__u32 b = hist_bucket(ns);

	if (b >= PODNET_HIST_BUCKETS)
		return;
	__sync_fetch_and_add(&h->buckets[b], 1);
	__sync_fetch_and_add(&h->sum_ns, ns);
}

static __always_inline __u32 sk_dir(const struct podnet_sock *st)
{
	return (st->flags & PODNET_SK_INBOUND) ? PODNET_INBOUND : PODNET_OUTBOUND;
}

/*
 * Egress of an established connection: sample its smoothed RTT when the interval is up.
 * The handshake arms the timer (see latency_state); a connection older than the agent is
 * armed by its first packet. A connection shorter than an interval is sampled at its close
 * alone; a compare-and-swap keeps it to one sample per interval across CPUs.
 */
static __always_inline void rtt_tick(struct __sk_buff *skb, struct bpf_sock *sk, struct podnet_sock *st,
				     struct podnet_counters *c)
{
	__u64 now = skb->tstamp, due = st->rtt_next_ns;
	struct bpf_tcp_sock *tp;

	if (!now || now < due)
		return;
	if (__sync_val_compare_and_swap(&st->rtt_next_ns, due, now + podnet_rtt_interval_ns) != due || !due)
		return;
	tp = bpf_tcp_sock(sk);
	if (tp && tp->srtt_us >> 3)
		hist_add(&c->rtt[sk_dir(st)], (__u64)(tp->srtt_us >> 3) * 1000);
}

/*
 * Egress, TCP (issue 11): the first SYN of a connect stamps the socket (every packet a
 * SYN_SENT socket sends is its SYN or a retransmission of it), then the RTT tick.
 */
static __always_inline void latency_egress(struct __sk_buff *skb, struct bpf_sock *sk, struct podnet_sock *st,
					   struct podnet_counters *c, __u32 state)
{
	if (state == BPF_TCP_SYN_SENT) {
		if (!st->syn_ns)
			st->syn_ns = skb->tstamp ? skb->tstamp : bpf_ktime_get_ns();
	} else if (st->flags & PODNET_SK_ESTABLISHED) {
		rtt_tick(skb, sk, st, c);
	}
}

/* ---- cgroup_skb: bytes and packets ---------------------------------------------------- */

struct pkt_info {
	__u32 hdr_len;		/* IP + L4 header bytes of one segment */
	__u32 transport;	/* PODNET_TCP / PODNET_UDP */
	__u32 seq;		/* TCP: sequence number of the first payload byte */
	__u32 ack_seq;		/* TCP: acknowledgment number (valid with ack) */
	bool l4_ok;		/* L4 header present: payload is known */
	bool fin;		/* TCP FIN */
	bool ack;		/* TCP ACK */
};

/* Parse the IP and L4 headers; false for anything not counted (non-IP, not TCP/UDP). */
static __always_inline bool parse(struct __sk_buff *skb, struct pkt_info *pi)
{
	pi->fin = false;
	pi->ack = false;
	pi->seq = 0;
	pi->ack_seq = 0;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 l3_len, l4_len = 0;
	__u8 proto, l4b[14];

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;
		__u8 b[10];

		if ((void *)(ip + 1) <= data_end) {
			l3_len = ip->ihl * 4;
			proto = ip->protocol;
			if (ip->frag_off & bpf_htons(0x1fff))
				goto no_l4;	/* a later fragment: no L4 header */
		} else {
			if (bpf_skb_load_bytes(skb, 0, b, sizeof(b)))
				return false;
			l3_len = (b[0] & 0xf) * 4;
			proto = b[9];
		}
		if (l3_len < sizeof(struct iphdr))
			return false;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data;
		__u8 b[7];

		l3_len = sizeof(struct ipv6hdr);
		if ((void *)(ip6 + 1) <= data_end) {
			proto = ip6->nexthdr;
		} else {
			if (bpf_skb_load_bytes(skb, 0, b, sizeof(b)))
				return false;
			proto = b[6];
		}
	} else {
		return false;
	}

	if (proto == IPPROTO_TCP) {
		__u8 *th = data + (l3_len & 0x3f);
		__be32 seq, ack_seq;
		__u8 doff, flags;

		pi->transport = PODNET_TCP;
		if ((void *)(th + 14) <= data_end) {	/* the linear header: no helper call */
			seq = *(__be32 *)(th + 4);
			ack_seq = *(__be32 *)(th + 8);
			doff = th[12];
			flags = th[13];
		} else {
			if (bpf_skb_load_bytes(skb, l3_len & 0x3f, l4b, sizeof(l4b)))
				goto no_l4;
			__builtin_memcpy(&seq, &l4b[4], 4);
			__builtin_memcpy(&ack_seq, &l4b[8], 4);
			doff = l4b[12];
			flags = l4b[13];
		}
		l4_len = (doff >> 4) * 4;
		if (l4_len < sizeof(struct tcphdr))
			goto no_l4;
		pi->seq = bpf_ntohl(seq) + ((flags & 0x02) ? 1 : 0);	/* a SYN takes one sequence number */
		pi->fin = flags & 0x01;
		pi->ack = flags & 0x10;
		pi->ack_seq = bpf_ntohl(ack_seq);
	} else if (proto == IPPROTO_UDP) {
		pi->transport = PODNET_UDP;
		if (skb->len < l3_len + 8)
			goto no_l4;
		l4_len = 8;
	} else {
		/* IPv6 extension headers and other protocols: not a TCP/UDP socket's data. */
		return false;
	}
	pi->hdr_len = l3_len + l4_len;
	pi->l4_ok = skb->len >= pi->hdr_len;
	if (!pi->l4_ok)
		pi->hdr_len = l3_len;
	return true;

no_l4:
	if (proto == IPPROTO_TCP)
		pi->transport = PODNET_TCP;
	else if (proto == IPPROTO_UDP)
		pi->transport = PODNET_UDP;
	else
		return false;
	pi->hdr_len = l3_len;
	pi->l4_ok = false;
	return true;
}

/* The local address of the packet's socket, as the fallback key. */
static __always_inline bool skb_local_ip(struct __sk_buff *skb, int io, struct podnet_ip_key *key)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__be32 a;

		if (bpf_skb_load_bytes(skb, io == PODNET_TX ? 12 : 16, &a, 4))
			return false;
		ip_key_v4(key, a);
		return true;
	}
	return bpf_skb_load_bytes(skb, io == PODNET_TX ? 8 : 24, key->addr, 16) == 0;
}

/*
 * Advance a payload mark to ``end`` and return the bytes beyond it: from ``start`` when the
 * mark is not valid yet or (``gaps``) lies before ``start``, else from the mark. A
 * compare-and-swap, because ingress and egress of one socket can run on two CPUs at once.
 */
static __always_inline __u32 advance_seq(__u64 *hw, __u32 start, __u32 end, const bool gaps)
{
	__u64 cur = *hw, prev;
	__u32 from;

	for (int i = 0; i < 4; i++) {
		from = start;
		if (cur) {
			__u32 h = (__u32)cur;

			if ((__s32)(end - h) <= 0)
				return 0;
			if (!gaps || (__s32)(h - start) > 0)
				from = h;
		}
		prev = __sync_val_compare_and_swap(hw, cur, (1ULL << 32) | end);
		if (prev == cur)
			return end - from;
		cur = prev;
	}
	return 0;
}

/* Received payload: in-order bytes up to rcv_nxt, never the FIN's sequence number. */
static __always_inline __u32 advance_rx(struct podnet_sock *st, __u32 rcv_nxt)
{
	if ((st->flags & PODNET_SK_FIN_RX) && (__s32)(rcv_nxt - st->fin_seq) > 0)
		rcv_nxt = st->fin_seq;
	/* First sight: count from here on (a connection older than the agent). */
	if (!(st->flags & PODNET_SK_RX_MARK))
		__sync_fetch_and_or(&st->flags, PODNET_SK_RX_MARK);
	return advance_seq(&st->seq_hw[PODNET_RX], rcv_nxt, rcv_nxt, false);
}

/*
 * The marks on the packet path (issue 10): plain loads and stores where only writers that
 * hold the socket lock can touch the mark. Every transmit of a full TCP socket runs under
 * it (process context owning the socket, or a softirq or timer under bh_lock_sock that
 * defers while a process owns it), and so does every state change: egress and the state
 * tracepoint never overlap on one socket. Ingress runs before tcp_v4_rcv() takes the lock,
 * but writes the receive mark only at a socket's first sight (the RX_MARK flag unset),
 * with advance_rx's compare-and-swap, and so does egress then. A listener is the one
 * socket whose packets leave without its lock (SYN-ACKs), and it sends no payload and
 * has no receive mark (rcv_nxt_valid).
 */
static __always_inline __u32 advance_mark(__u64 *hw, __u32 start, __u32 end, const bool gaps)
{
	__u64 cur = *hw;
	__u32 from = start;

	if (cur) {
		__u32 h = (__u32)cur;

		if ((__s32)(end - h) <= 0)
			return 0;
		if (!gaps || (__s32)(h - start) > 0)
			from = h;
	}
	*hw = (1ULL << 32) | end;
	return end - from;
}

/* advance_rx for egress: plain once the mark exists (see advance_mark). */
static __always_inline __u32 advance_rx_locked(struct podnet_sock *st, __u32 rcv_nxt)
{
	if (!(st->flags & PODNET_SK_RX_MARK))
		return advance_rx(st, rcv_nxt);
	if ((st->flags & PODNET_SK_FIN_RX) && (__s32)(rcv_nxt - st->fin_seq) > 0)
		rcv_nxt = st->fin_seq;
	return advance_mark(&st->seq_hw[PODNET_RX], rcv_nxt, rcv_nxt, false);
}

/* IP bytes and packets as on the wire: a GSO/GRO skb is the segments it stands for. */
static __always_inline void count_wire(struct podnet_counters *c, struct __sk_buff *skb,
				       const struct pkt_info *pi, const int io)
{
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;

	if (io == PODNET_RX) {	/* ingress only, bottom halves off: see the design notes */
		c->bytes[io][pi->transport] += skb->len + (segs - 1) * pi->hdr_len;
		c->packets[io][pi->transport] += segs;
		return;
	}
	__sync_fetch_and_add(&c->bytes[io][pi->transport], skb->len + (segs - 1) * pi->hdr_len);
	__sync_fetch_and_add(&c->packets[io][pi->transport], segs);
}

/* ---- peers (issue 12): bytes and connections by (slot, remote address) ----------------- */

/*
 * Rows of podnet_peer_stats: the slots' overflow rows plus the allocatable ones (podnet.h).
 * 0 turns peers off (--max-peers 0): every peer function below returns at once, and the
 * verifier drops that code as dead, so the packet path is what it was without peers.
 */
const volatile __u32 podnet_peer_rows = PODNET_MAX_SLOTS + PODNET_PEER_ROWS;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PODNET_MAX_SLOTS + PODNET_PEER_ROWS);
	__type(key, __u32);
	__type(value, struct podnet_peer_counters);
} podnet_peer_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODNET_PEER_ROWS);
	__type(key, struct podnet_peer_key);
	__type(value, struct podnet_peer_val);
} podnet_peer_idx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, PODNET_PEER_ROWS);
	__type(value, __u32);
} podnet_peer_free SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PODNET_MAX_SLOTS + PODNET_PEER_ROWS);
	__type(key, __u32);
	__type(value, struct podnet_peer_owner);
} podnet_peer_owner SEC(".maps");

/*
 * The row of (slot, remote): found in podnet_peer_idx, else a free row taken for it, else
 * (no free row, the index full) the slot's overflow row, which keeps the pod's totals
 * exact. The owner record is written before the row is published in the index.
 */
static __always_inline __u32 peer_row(__u32 slot, const struct podnet_ip_key *remote)
{
	struct podnet_peer_key key = { .slot = slot };
	struct podnet_peer_val fresh = {}, *v;
	struct podnet_peer_owner *own;
	__u32 row;

	__builtin_memcpy(key.addr, remote->addr, sizeof(key.addr));
	v = bpf_map_lookup_elem(&podnet_peer_idx, &key);
	if (v)
		return v->row;
	if (bpf_map_pop_elem(&podnet_peer_free, &row))
		goto full;
	own = bpf_map_lookup_elem(&podnet_peer_owner, &row);
	if (!own || row < podnet_max_slots)
		goto full;	/* not a row the agent hands out: never happens */
	own->slot = slot;
	__builtin_memcpy(own->addr, remote->addr, sizeof(own->addr));
	own->used = 1;
	fresh.row = row;
	if (bpf_map_update_elem(&podnet_peer_idx, &key, &fresh, BPF_NOEXIST) == 0)
		return row;
	/* Another CPU inserted it first, or the index is full. */
	own->used = 0;
	bpf_map_push_elem(&podnet_peer_free, &row, 0);
	v = bpf_map_lookup_elem(&podnet_peer_idx, &key);
	if (v)
		return v->row;
full:
	health_inc(PODNET_H_PEERS_FULL);
	return slot;
}

/*
 * Resolved with the slot: a connected TCP socket has one remote for its life, so its row is
 * cached in the socket's storage and its packets need no lookup. A listener (its SYNs and
 * SYN-ACKs come from many remotes) and UDP sockets (unconnected ones send anywhere) are
 * looked up per packet: PODNET_PEER_NONE.
 */
static __always_inline void peer_resolve(struct podnet_sock *st, __u32 slot, bool cache,
					 const struct podnet_ip_key *remote)
{
	if (!podnet_peer_rows)
		return;
	st->peer_row = (cache && remote) ? peer_row(slot, remote) : PODNET_PEER_NONE;
}

static __always_inline void peer_add_bytes(__u32 row, __u64 bytes, const int io)
{
	struct podnet_peer_counters *p = bpf_map_lookup_elem(&podnet_peer_stats, &row);

	if (!p)
		return;
	if (io == PODNET_RX)	/* only ingress writes it, bottom halves off: see count_wire */
		p->bytes[io] += bytes;
	else
		__sync_fetch_and_add(&p->bytes[io], bytes);
}

/* A packet's IP bytes as count_wire counts them, to the packet's row. */
static __always_inline void peer_count_skb(__u32 slot, __u32 row, struct __sk_buff *skb,
					   const struct pkt_info *pi, const int io)
{
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;

	if (!podnet_peer_rows || slot >= podnet_max_slots)
		return;
	if (row == PODNET_PEER_NONE) {
		struct podnet_ip_key remote;

		/* the remote address is the one that is not local: skb_local_ip the other way */
		row = skb_local_ip(skb, io == PODNET_TX ? PODNET_RX : PODNET_TX, &remote) ?
			      peer_row(slot, &remote) : slot;
	}
	peer_add_bytes(row, skb->len + (segs - 1) * pi->hdr_len, io);
}

static __always_inline void sk_remote_ip(const struct sock *sk, struct podnet_ip_key *key)
{
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET)
		ip_key_v4(key, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	else
		BPF_CORE_READ_INTO(key->addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
}

/* The row of a full TCP socket's connection events (opened, failed): cached, else found. */
static __always_inline struct podnet_peer_counters *peer_of_sk(const struct sock *sk,
							       struct podnet_sock *st)
{
	__u32 row = st->peer_row;

	if (row == PODNET_PEER_NONE) {
		struct podnet_ip_key remote;

		sk_remote_ip(sk, &remote);
		row = peer_row(st->slot, &remote);
	}
	return bpf_map_lookup_elem(&podnet_peer_stats, &row);
}

static __always_inline void peer_opened(const struct sock *sk, struct podnet_sock *st, bool in)
{
	struct podnet_peer_counters *p;

	if (!podnet_peer_rows)
		return;
	p = peer_of_sk(sk, st);
	if (p)
		__sync_fetch_and_add(&p->opened[in ? PODNET_INBOUND : PODNET_OUTBOUND], 1);
}

static __always_inline void peer_failed(const struct sock *sk, struct podnet_sock *st, __u32 reason)
{
	struct podnet_peer_counters *p;

	if (!podnet_peer_rows)
		return;
	p = peer_of_sk(sk, st);
	if (p && reason < PODNET_NFAILS)
		__sync_fetch_and_add(&p->failed[reason], 1);
}

#if PODNET_CUT == CUT_NOSTORAGE
/*
 * Cut 3 (bench/run.py's nostorage): per packet, what a design without socket storage
 * could not avoid: the pod from the packet's socket cgroup, one lookup of its slot (a
 * cgroup never seen takes a free slot, and one that is not a pod's falls back to the
 * local address, as resolve() does), the wire counts. Left out: payload bytes, latency,
 * peers, adoption, the control socket's replies (they go by the address fallback).
 */
static __always_inline int nostorage_skb(struct __sk_buff *skb, const struct pkt_info *pi, const int io)
{
	struct podnet_counters *c;
	__u32 kind, slot;

	slot = cgroup_slot(bpf_skb_cgroup_id(skb), &kind);
	if (kind != PODNET_CG_POD) {
		struct podnet_ip_key local;
		struct podnet_ip_val *ip;

		if (skb_local_ip(skb, io, &local)) {
			ip = bpf_map_lookup_elem(&podnet_pod_ips, &local);
			if (ip)
				slot = ip->slot;
		}
	}
	if (slot >= podnet_max_slots)
		slot = PODNET_SLOT_NODE;
	c = slot_counters(slot);
	if (c)
		count_wire(c, skb, pi, io);
	return SK_PASS;
}
#endif

static __always_inline int count_skb(struct __sk_buff *skb, const int io)
{
	struct bpf_sock *sk = skb->sk;
	struct podnet_counters *c;
	struct podnet_sock *st;
	struct pkt_info pi;
	__u32 slot, state;

	if (PODNET_CUT == CUT_HOOKS)
		return SK_PASS;
	if (!sk || skb->ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;
	if (!parse(skb, &pi))
		return SK_PASS;
#if PODNET_CUT == CUT_NOSTORAGE
	return nostorage_skb(skb, &pi, io);
#endif
	state = sk->state;	/* read before the flags: see the adoption below */

	st = bpf_sk_storage_get(&podnet_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (PODNET_CUT == CUT_STORAGE)
		return SK_PASS;
	if (!st) {
		/* No memory for the cache: still count bytes and packets, by the cgroup. */
		__u32 kind;

		health_inc(PODNET_H_NO_STORAGE);
		slot = cgroup_slot(bpf_skb_cgroup_id(skb), &kind);
		c = slot_counters(slot);
		if (c)
			count_wire(c, skb, &pi, io);
		peer_count_skb(slot, slot, skb, &pi, io);	/* peers: the overflow row */
		return SK_PASS;
	}

	slot = st->slot;
	if (!(st->flags & PODNET_SK_RESOLVED) || st->gen != podnet_gen) {
		struct podnet_ip_key local;
		struct bpf_sock *full;
		__u32 old, reply = 0;

		slot = resolve(st, bpf_skb_cgroup_id(skb),
			       skb_local_ip(skb, io, &local) ? &local : NULL);
		if (podnet_peer_rows) {	/* peers (issue 12) */
			struct podnet_ip_key remote;
			bool ok = skb_local_ip(skb, io == PODNET_TX ? PODNET_RX : PODNET_TX, &remote);

			peer_resolve(st, slot, pi.transport == PODNET_TCP && state != BPF_TCP_LISTEN,
				     ok ? &remote : NULL);
		}
		/*
		 * The kernel answers for sockets it has not got (a RST for a closed port) from a
		 * raw TCP control socket shared by every namespace: marked once here, its packets
		 * then go by their source address below.
		 */
		full = bpf_sk_fullsock(sk);
		if (full && full->type == SOCK_RAW && full->protocol == IPPROTO_TCP)
			reply = PODNET_SK_REPLY;
		old = __sync_fetch_and_or(&st->flags, PODNET_SK_RESOLVED | reply);
		if (!(old & PODNET_SK_RESOLVED) && pi.transport == PODNET_TCP) {
			/* first sight: retransmits count from here on (see retrans_catch_up) */
			struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);

			if (tp)
				st->retrans_seen = tp->total_retrans;
		}
		/*
		 * First sight of an established TCP socket: it was established before the
		 * agent, so adopt it as active. A connection that established while we
		 * watched already set flags in the state tracepoint, which runs before the
		 * kernel stores the new state that we read above.
		 */
		if (old == 0 && pi.transport == PODNET_TCP && state == BPF_TCP_ESTABLISHED) {
			__u16 lport = sk->src_port, rport = podnet_bpf_sock_dport(sk);
			bool in = guess_inbound(lport, rport);

			st->open_slot = slot;
			__sync_fetch_and_or(&st->flags, PODNET_SK_ESTABLISHED |
						(in ? PODNET_SK_INBOUND : 0));
			c = slot_counters(slot);
			if (c)
				__sync_fetch_and_add(&c->adopted[in ? PODNET_INBOUND : PODNET_OUTBOUND], 1);
		}
	}

	if (st->flags & PODNET_SK_REPLY) {
		/* A reply of the control socket: the pod whose address it comes from, else the node. */
		struct podnet_ip_key local;
		struct podnet_ip_val *ip = NULL;

		if (skb_local_ip(skb, io, &local))
			ip = bpf_map_lookup_elem(&podnet_pod_ips, &local);
		slot = ip ? ip->slot : PODNET_SLOT_NODE;
		c = slot_counters(slot);
		if (c)
			count_wire(c, skb, &pi, io);
		peer_count_skb(slot, PODNET_PEER_NONE, skb, &pi, io);	/* peers: per packet */
		return SK_PASS;	/* no connection, no payload: the storage is shared */
	}
	c = slot_counters(slot);
	if (!c)
		return SK_PASS;
	count_wire(c, skb, &pi, io);
	peer_count_skb(slot, st->peer_row, skb, &pi, io);	/* peers (issue 12) */
	if (pi.transport != PODNET_TCP || !pi.l4_ok)
		return SK_PASS;
	if (io == PODNET_TX) {
		__u32 len = skb->len - pi.hdr_len, fresh;

		latency_egress(skb, sk, st, c, state);	/* latency (issue 11) */

		if (len) {
			fresh = advance_mark(&st->seq_hw[PODNET_TX], pi.seq, pi.seq + len, true);
			if (fresh)
				__sync_fetch_and_add(&c->payload[PODNET_TX], fresh);
		}
		/*
		 * rcv_nxt moves after the stack has taken a segment, and every segment taken is
		 * acknowledged by a packet of ours, whose ACK number is rcv_nxt as it was sent:
		 * following it (and rcv_nxt itself at the close, in the state tracepoint) sees
		 * every received byte without touching tcp_sock per packet.
		 */
		if (pi.ack && rcv_nxt_valid(state)) {
			fresh = advance_rx_locked(st, pi.ack_seq);
			if (fresh)
				__sync_fetch_and_add(&c->payload[PODNET_RX], fresh);
		}
	} else {
		/*
		 * The receive mark starts where the stream is when we first see the socket: on
		 * ingress, before this segment is taken (a connection older than the agent).
		 */
		if (!(st->flags & PODNET_SK_RX_MARK) && rcv_nxt_valid(state)) {
			struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);

			if (tp)
				advance_rx(st, tp->rcv_nxt);
		}
		if (pi.fin) {
			st->fin_seq = pi.seq + skb->len - pi.hdr_len;
			__sync_fetch_and_or(&st->flags, PODNET_SK_FIN_RX);
		}
	}
	return SK_PASS;
}

SEC("cgroup_skb/ingress")
int podnet_ingress(struct __sk_buff *skb)
{
	return count_skb(skb, PODNET_RX);
}

SEC("cgroup_skb/egress")
int podnet_egress(struct __sk_buff *skb)
{
	return count_skb(skb, PODNET_TX);
}

/* ---- tracepoints: connections and TCP events ------------------------------------------ */

/*
 * Reads in the tracepoints (issue 10). tp_btf hands the programs BTF-typed kernel pointers,
 * which they may load from directly: still CO-RE (the declarations in podnet_kernel.h carry
 * preserve_access_index, so libbpf relocates every offset against the running kernel), and
 * the JIT turns each into a plain load guarded by an exception-table entry, where
 * BPF_CORE_READ is a bpf_probe_read_kernel() call per field: about 15-20 ns each, five to
 * eight per run in podnet_state. Every read on a socket's state-change path is direct;
 * tcp_sock fields are reached through bpf_skc_to_tcp_sock() (a pointer cast the verifier
 * checks; a cast in C would not be accepted beyond struct sock). All of it is in 6.1.
 */
static __always_inline void sk_local_ip(const struct sock *sk, struct podnet_ip_key *key)
{
	if (sk->__sk_common.skc_family == AF_INET)
		ip_key_v4(key, sk->__sk_common.skc_rcv_saddr);
	else
		__builtin_memcpy(key->addr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
}

static __always_inline struct tcp_sock *sk_tcp(const struct sock *sk)
{
	return bpf_skc_to_tcp_sock((void *)sk);
}

/* Addresses the kernel routes over lo: a loopback peer, or the socket's own address. */
static __always_inline bool skc_on_loopback(const struct sock_common *skc)
{
	__u8 d[16], s[16];

	if (BPF_CORE_READ(skc, skc_family) == AF_INET) {
		__be32 da = BPF_CORE_READ(skc, skc_daddr);

		return (bpf_ntohl(da) >> 24) == 127 || da == BPF_CORE_READ(skc, skc_rcv_saddr);
	}
	BPF_CORE_READ_INTO(&d, skc, skc_v6_daddr.in6_u.u6_addr8);
	BPF_CORE_READ_INTO(&s, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
	if (__builtin_memcmp(d, s, 16) == 0)
		return true;
	for (int i = 0; i < 10; i++)
		if (d[i])
			return false;
	if (d[10] == 0xff && d[11] == 0xff)	/* ::ffff:127.0.0.0/104 */
		return d[12] == 127;
	return !d[10] && !d[11] && !d[12] && !d[13] && !d[14] && d[15] == 1;	/* ::1 */
}

/*
 * A connection over lo: its route's device, and without a route (not set yet, or reset)
 * its addresses.
 */
static __always_inline bool sk_on_loopback(const struct sock *sk)
{
	struct dst_entry *dst = sk->sk_dst_cache;	/* direct reads: see sk_local_ip */

	if (dst) {
		struct net_device *dev = dst->dev;

		return dev && dev->ifindex == LOOPBACK_IFINDEX;
	}
	return skc_on_loopback(&sk->__sk_common);
}

/* Socket storage for a full socket, resolved; NULL if none can be had. */
static __always_inline struct podnet_sock *sk_state(const struct sock *sk)
{
	struct podnet_sock *st;

	st = bpf_sk_storage_get(&podnet_socks, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		health_inc(PODNET_H_NO_STORAGE);
		return NULL;
	}
	if (!(st->flags & PODNET_SK_RESOLVED) || st->gen != podnet_gen) {
		struct podnet_ip_key local;

		sk_local_ip(sk, &local);
		resolve(st, podnet_sk_cgroup_id(sk), &local);
		if (podnet_peer_rows) {	/* peers (issue 12) */
			struct podnet_ip_key remote;

			sk_remote_ip(sk, &remote);
			peer_resolve(st, st->slot,
				     BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN, &remote);
		}
		/* first sight: retransmits count from here on (every caller's socket is TCP) */
		if (!(__sync_fetch_and_or(&st->flags, PODNET_SK_RESOLVED) & PODNET_SK_RESOLVED))
			st->retrans_seen = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
	}
	return st;
}

/* The counters a full socket's events go to (and its storage, resolved). */
static __always_inline struct podnet_counters *sk_counters(const struct sock *sk, struct podnet_sock **stp)
{
	struct podnet_sock *st = sk_state(sk);

	if (!st)
		return NULL;
	if (stp)
		*stp = st;
	return slot_counters(st->slot);
}

/* Request and timewait mini-sockets have no storage (and no cgroup of their own). */
static __always_inline bool sk_is_full(const struct sock *sk)
{
	__u8 state = sk->__sk_common.skc_state;	/* direct: see sk_local_ip */

	return state != BPF_TCP_TIME_WAIT && state != BPF_TCP_NEW_SYN_RECV;
}

static __always_inline __u32 fail_reason(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return PODNET_FAIL_REFUSED;
	case ETIMEDOUT:
		return PODNET_FAIL_TIMEOUT;
	case EHOSTUNREACH:
	case ENETUNREACH:
		return PODNET_FAIL_UNREACHABLE;
	case ECONNRESET:
		return PODNET_FAIL_RESET;
	default:
		return PODNET_FAIL_OTHER;
	}
}

/*
 * Latency at a state change (issue 11): the connect duration at ESTABLISHED (outbound
 * from the SYN's stamp, see latency_egress), the RTT of a counted connection that leaves
 * ESTABLISHED. Runs before the connection accounting below, which clears the flags read
 * here.
 */
static __always_inline void latency_state(const struct sock *sk, struct podnet_sock *st,
					  struct podnet_counters *c, int oldstate, int newstate)
{
	struct tcp_sock *tp;
	__u64 srtt;

	if (oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE) {
		st->syn_ns = 0;	/* a failed attempt: not a connect duration */
		return;
	}
	if (newstate == TCP_ESTABLISHED) {
		__u64 now = bpf_ktime_get_ns();

		/* skb->tstamp of TCP is tcp_clock_ns(), this same clock (CLOCK_MONOTONIC): the
		 * first periodic RTT sample is due one interval after the handshake */
		st->rtt_next_ns = now + podnet_rtt_interval_ns;
		if (oldstate == TCP_SYN_SENT && st->syn_ns && now > st->syn_ns) {
			hist_add(&c->connect[PODNET_OUTBOUND], now - st->syn_ns);
			st->syn_ns = 0;
		} else if (oldstate == TCP_SYN_RECV && (tp = sk_tcp(sk))) {
			srtt = tp->srtt_us >> 3;
			if (srtt)
				hist_add(&c->connect[PODNET_INBOUND], srtt * 1000);
		}
		return;
	}
	if (oldstate == TCP_ESTABLISHED && (st->flags & PODNET_SK_ESTABLISHED) && (tp = sk_tcp(sk))) {
		srtt = tp->srtt_us >> 3;
		if (srtt)
			hist_add(&c->rtt[sk_dir(st)], srtt * 1000);
	}
}

/*
 * Retransmitted segments, exactly as the kernel's RetransSegs counts them: by the socket's
 * own tcp_sock.total_retrans, which the kernel adds to right beside RetransSegs (the
 * segments of the retransmit, before it is sent), not by tracepoint hits. The tracepoint
 * fires only for retransmits that were sent on kernels before "tcp: trace retransmit
 * failures" (which gave it its err argument, as 6.18 has it), for every attempt, sent or
 * not, since; and a hit can be skipped (see state_change). Whatever a hit misses, the
 * next one or the close catches up.
 * A fresh storage starts from the socket's figure at first sight (sk_state, count_skb).
 */
static __always_inline void retrans_catch_up(const struct sock *sk, struct podnet_sock *st,
					     struct podnet_counters *c)
{
	__u32 total = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
	__u32 fresh = total - st->retrans_seen;

	if (!fresh)
		return;
	if ((__s32)fresh < 0)	/* reset behind our back (tcp_disconnect): all new */
		fresh = total;
	st->retrans_seen = total;
	__sync_fetch_and_add(&c->retransmits, fresh);
}

/*
 * Exactly once per state change, with two programs. Since 6.2 the kernel skips a raw
 * tracepoint program (__bpf_trace_run counts it in the program's recursion_misses) when
 * the tracepoint fires while that same program runs on the CPU: a state change in a softirq (a SYN timing out, a RST arriving) that
 * interrupts podnet_state running in process context for another socket (a connect, a
 * close) was lost. podnet_state2, a second program on the same tracepoint, attached
 * after it (so it runs after it), is never active when podnet_state is interrupted, and
 * the other way round: one of the two always runs. podnet_state notes the change in the
 * socket's storage (ev_note); podnet_state2 finds the note and only clears it, or finds
 * none and counts the change itself. One socket's state changes never interleave (the
 * socket lock), so a note is always this change's: a stale one (podnet_state2 skipped)
 * has other states than the next change counted, as the new state of one change is the
 * old state of the next, and a new connect (CLOSE -> SYN_SENT) clears it anyway.
 */
#if PODNET_CUT == CUT_NOSTORAGE
/*
 * Cut 3 (bench/run.py's nostorage): per state change, what a design without socket
 * storage could not avoid. Only the changes that count go on: to ESTABLISHED from
 * SYN_SENT or SYN_RECV (opened), out of ESTABLISHED (closed), SYN_SENT to CLOSE (failed);
 * then TCP and not over lo, the socket's cgroup (direct reads), its slot, one atomic add.
 * Left out: adoption (a connection older than the agent closes without having opened),
 * the slot that opened a connection (it closes in the slot it has then), latency, the
 * last received bytes, retransmits, peers. The direction of a close is from the ports, as
 * for adoption (the storage kept it from the open).
 * Exactly once with two programs and no note in the socket: podnet_state is skipped only
 * while it runs on this CPU (see state_change), so it marks a per-CPU flag for as long as
 * it runs, and podnet_state2 counts only when it finds the flag set. (A change that comes
 * in the few instructions before the first store or after the last is lost.)
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} podnet_state_busy SEC(".maps");

/* The ports of a socket, for the kernel's struct sock_common (members of an anonymous union). */
struct sock_common___ports {
	__be16 skc_dport;
	__u16 skc_num;
} __attribute__((preserve_access_index));

static __always_inline void nostorage_count(const struct sock *sk, const int oldstate, const int newstate)
{
	const struct sock_common___ports *ports = (const void *)&sk->__sk_common;
	struct podnet_ip_key local;
	struct podnet_ip_val *ip;
	struct podnet_counters *c;
	__u32 kind, slot;

	if (newstate == TCP_ESTABLISHED) {
		if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
			return;
	} else if (oldstate != TCP_ESTABLISHED && !(oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE)) {
		return;
	}
	if (podnet_sk_protocol(sk) != IPPROTO_TCP || sk_on_loopback(sk))
		return;
	slot = cgroup_slot(podnet_sk_cgroup_id(sk), &kind);
	if (kind != PODNET_CG_POD) {
		sk_local_ip(sk, &local);
		ip = bpf_map_lookup_elem(&podnet_pod_ips, &local);
		if (ip)
			slot = ip->slot;
	}
	if (slot >= podnet_max_slots)
		slot = PODNET_SLOT_NODE;
	c = slot_counters(slot);
	if (!c)
		return;
	if (newstate == TCP_ESTABLISHED) {
		__sync_fetch_and_add(&c->opened[oldstate == TCP_SYN_RECV ? PODNET_INBOUND : PODNET_OUTBOUND], 1);
	} else if (oldstate == TCP_ESTABLISHED) {
		bool in = guess_inbound(ports->skc_num, bpf_ntohs(ports->skc_dport));

		__sync_fetch_and_add(&c->closed[in ? PODNET_INBOUND : PODNET_OUTBOUND], 1);
	} else {
		__u32 reason = fail_reason(sk->sk_err);

		if (reason < PODNET_NFAILS)
			__sync_fetch_and_add(&c->failed[reason], 1);
	}
}

static __always_inline int nostorage_state(const struct sock *sk, const int oldstate, const int newstate,
					   const bool second)
{
	__u32 zero = 0;
	volatile __u32 *busy = bpf_map_lookup_elem(&podnet_state_busy, &zero);

	if (!busy)
		return 0;
	if (second) {
		if (*busy)	/* podnet_state runs below us on this CPU: it was skipped */
			nostorage_count(sk, oldstate, newstate);
		return 0;
	}
	*busy = 1;
	nostorage_count(sk, oldstate, newstate);
	*busy = 0;
	return 0;
}
#endif

static __always_inline int state_change(const struct sock *sk, const int oldstate, const int newstate,
					const bool second)
{
	struct podnet_counters *c;
	struct podnet_sock *st;
	struct tcp_sock *tp;
	__u32 old;

	if (PODNET_CUT == CUT_HOOKS)
		return 0;
#if PODNET_CUT == CUT_NOSTORAGE
	return nostorage_state(sk, oldstate, newstate, second);
#endif
	if (newstate == TCP_SYN_SENT) {	/* a new attempt: no note of the last one stays */
		st = bpf_sk_storage_get(&podnet_socks, (void *)sk, 0, 0);
		if (st)
			st->ev_note = 0;
		return 0;
	}
	/* Early exit for the transitions we do not count (or read rcv_nxt at: the close). */
	if (newstate != TCP_ESTABLISHED && oldstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	/*
	 * Closes that change nothing (issue 10): a listener's, a child's that never reached
	 * ESTABLISHED (nothing was counted for it), and the passive closer's last step
	 * (CLOSE_WAIT or LAST_ACK to CLOSE): the peer's FIN came before, no byte can follow it,
	 * and rcv_nxt was read when it arrived (ESTABLISHED -> CLOSE_WAIT runs in tcp_fin(),
	 * after the FIN moved rcv_nxt). Without it, each such socket would also take storage
	 * and resolve here. The transitions a close counts stay: SYN_SENT (a failure),
	 * ESTABLISHED, FIN_WAIT1/2 and CLOSING (rcv_nxt, when no packet of ours followed).
	 */
	if (newstate == TCP_CLOSE && (oldstate == TCP_CLOSE_WAIT || oldstate == TCP_LAST_ACK ||
				      oldstate == TCP_LISTEN || oldstate == TCP_SYN_RECV ||
				      oldstate == TCP_CLOSE))
		return 0;
	if (second) {
		st = bpf_sk_storage_get(&podnet_socks, (void *)sk, 0, 0);
		if (st && st->ev_note == PODNET_EV_NOTE(oldstate, newstate)) {
			st->ev_note = 0;	/* podnet_state counted it */
			return 0;
		}
	}
	if (podnet_sk_protocol(sk) != IPPROTO_TCP || sk_on_loopback(sk))
		return 0;
	if (PODNET_CUT == CUT_STORAGE) {	/* the storage, and the note podnet_state2 looks for */
		st = bpf_sk_storage_get(&podnet_socks, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st && !second)
			st->ev_note = PODNET_EV_NOTE(oldstate, newstate);
		return 0;
	}
	c = sk_counters(sk, &st);
	if (!c)
		return 0;
	if (!second)
		st->ev_note = PODNET_EV_NOTE(oldstate, newstate);
	if (newstate == TCP_CLOSE) {
		/* the retransmits whose hit was missed; tcp_disconnect() zeroes total_retrans */
		retrans_catch_up(sk, st, c);
		st->retrans_seen = 0;
	}

	latency_state(sk, st, c, oldstate, newstate);	/* latency (issue 11) */

	/* The last received bytes, when no packet of ours follows them (a close). */
	if ((rcv_nxt_valid(oldstate) || newstate == TCP_ESTABLISHED) && (tp = sk_tcp(sk))) {
		__u32 fresh = advance_rx(st, tp->rcv_nxt);

		if (fresh)
			__sync_fetch_and_add(&c->payload[PODNET_RX], fresh);
	}

	if (newstate == TCP_ESTABLISHED) {
		bool in = oldstate == TCP_SYN_RECV;

		if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
			return 0;
		if (!(st->flags & PODNET_SK_ESTABLISHED))
			st->open_slot = st->slot;	/* before the flag that makes it valid */
		old = __sync_fetch_and_or(&st->flags, PODNET_SK_ESTABLISHED |
					  (in ? PODNET_SK_INBOUND : 0));
		if (!(old & PODNET_SK_ESTABLISHED)) {
			__sync_fetch_and_add(&c->opened[in ? PODNET_INBOUND : PODNET_OUTBOUND], 1);
			peer_opened(sk, st, in);	/* peers (issue 12) */
		}
	} else if (oldstate == TCP_ESTABLISHED) {
		/*
		 * Only connections we counted as active end here, and in the slot that counted
		 * them (the socket may resolve elsewhere since): active never goes below 0.
		 */
		old = __sync_fetch_and_and(&st->flags, ~(PODNET_SK_ESTABLISHED | PODNET_SK_INBOUND));
		if (old & PODNET_SK_ESTABLISHED) {
			struct podnet_counters *oc = slot_counters(st->open_slot);

			if (oc)
				__sync_fetch_and_add(&oc->closed[(old & PODNET_SK_INBOUND) ?
								 PODNET_INBOUND : PODNET_OUTBOUND], 1);
		}
	} else if (oldstate == TCP_SYN_SENT) {
		/* SYN_SENT -> CLOSE: the kernel sets sk_err before it closes the socket. */
		__u32 reason = fail_reason(BPF_CORE_READ(sk, sk_err));

		__sync_fetch_and_add(&c->failed[reason], 1);
		peer_failed(sk, st, reason);	/* peers (issue 12) */
	}
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(podnet_state, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_change(sk, oldstate, newstate, false);
}

/* The changes podnet_state was skipped for (see state_change); attached after it. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(podnet_state2, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_change(sk, oldstate, newstate, true);
}

static __always_inline int on_retransmit(const struct sock *sk)
{
	struct podnet_counters *c;
	struct podnet_sock *st;

	if (PODNET_CUT || sk_on_loopback(sk))
		return 0;
	c = sk_counters(sk, &st);
	if (c)
		retrans_catch_up(sk, st, c);
	return 0;
}

/*
 * Two programs here too, for the hits the kernel skips (see state_change); counting by
 * total_retrans makes the second run of a hit add nothing. A hit inside a retransmit that
 * failed early (6.17+: still in the host queue, no memory) adds nothing either.
 */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(podnet_retrans, const struct sock *sk)
{
	return on_retransmit(sk);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(podnet_retrans2, const struct sock *sk)
{
	return on_retransmit(sk);
}

/*
 * A SYN-ACK sent again for a request (tcp_rtx_synack): RetransSegs counts it, and so does
 * its listener, once the kernel has sent it (the tracepoint fires only then). Over lo it is
 * no network traffic; the request's addresses say (the listener's own do not). A passive
 * Fast Open child is a full socket that adds it to its own total_retrans.
 */
SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(podnet_synack, const struct sock *sk, const struct request_sock *req)
{
	struct podnet_counters *c;

	if (PODNET_CUT)
		return 0;
	if (BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return on_retransmit(sk);
	if (skc_on_loopback(&req->__req_common))
		return 0;
	c = sk_counters(sk, NULL);
	if (c)
		__sync_fetch_and_add(&c->retransmits, 1);
	return 0;
}

/*
 * A reset with no full socket (a closed port, a TIME_WAIT socket) belongs to whoever owns
 * the destination address of the packet it answers: a pod by its IP, else the node.
 */
static __always_inline __u32 skb_owner_slot(const struct sk_buff *skb)
{
	struct podnet_ip_key key;
	struct podnet_ip_val *ip;
	unsigned char *nh;

	if (!skb)
		return PODNET_SLOT_NODE;
	nh = BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(ETH_P_IP)) {
		__be32 daddr;

		bpf_probe_read_kernel(&daddr, 4, nh + 16);
		ip_key_v4(&key, daddr);
	} else {
		bpf_probe_read_kernel(key.addr, 16, nh + 24);
	}
	ip = bpf_map_lookup_elem(&podnet_pod_ips, &key);
	return ip ? ip->slot : PODNET_SLOT_NODE;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(podnet_rst_tx, const struct sock *sk, const struct sk_buff *skb)
{
	struct podnet_counters *c = NULL;

	if (PODNET_CUT)
		return 0;
	if (sk && sk_is_full(sk)) {
		if (sk_on_loopback(sk))
			return 0;
		c = sk_counters(sk, NULL);
	} else if (skb && BPF_CORE_READ(skb, skb_iif) == LOOPBACK_IFINDEX) {
		return 0;	/* the answer to a packet that came over lo */
	}
	if (!c)
		c = slot_counters(skb_owner_slot(skb));
	if (c)
		__sync_fetch_and_add(&c->resets[PODNET_TX], 1);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(podnet_rst_rx, struct sock *sk)
{
	struct podnet_counters *c;

	if (PODNET_CUT || sk_on_loopback(sk))
		return 0;
	c = sk_counters(sk, NULL);
	if (c)
		__sync_fetch_and_add(&c->resets[PODNET_RX], 1);
	return 0;
}

/*
 * podnet_cgroup_rmdir: the id of every cgroup v2 directory removed on the node, queued for
 * the agent (issue 10).
 *
 * Design decisions:
 * - The agent used to learn that a pod's cgroup was gone by stat()ing every pod cgroup
 *   every interval: O(cgroups) system calls per collection, the largest part of its cgroup
 *   work at 110 pods. The kernel says it as it happens, so a collection costs O(removals).
 * - Every removal on the default hierarchy is queued, not only those of cgroups in
 *   podnet_cgroups: the agent may be inserting a cgroup's entry while it is removed, and
 *   it reads the queue after its inserts, so none is missed. Other hierarchies (cgroup v1
 *   on a hybrid host) number their cgroups on their own: their ids could be a v2 cgroup's.
 *   The default hierarchy is hierarchy 0 (as in /proc/cgroups).
 * - The queue is bounded: when it is full the removal is counted (PODNET_H_GONE_LOST) and
 *   the agent checks every pod cgroup once, as it did every interval before; it does the
 *   same once after attach, for removals between its walk of the hierarchy and attach.
 */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, PODNET_MAX_GONE);
	__type(value, __u64);
} podnet_cgroups_gone SEC(".maps");

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(podnet_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	__u64 id;

	if (PODNET_CUT == CUT_HOOKS || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	id = BPF_CORE_READ(cgrp, kn, id);
	if (bpf_map_push_elem(&podnet_cgroups_gone, &id, 0))
		health_inc(PODNET_H_GONE_LOST);
	return 0;
}

/* ---- kernel-side sums (issue 10): every CPU's row of a slot, added in the kernel ------- */

/*
 * Design decisions:
 * - The agent reads its per-CPU tables once per collection, and summing a row's copies
 *   over the CPUs in user space costs in proportion to the CPUs (a slot is 1120 bytes on
 *   every possible CPU: 72 KB to read and add on 64 CPUs). podnet_sum adds them here
 *   instead, into one row per slot, so the agent reads one summed row per slot whatever the
 *   CPU count: one BPF_PROG_TEST_RUN and one batched read per table (a run per range of
 *   rows where rows x CPUs is large: the program never yields, see SUM_BUDGET in
 *   otel_podnet/datapath.py). It needs
 *   BPF_PROG_TYPE_SYSCALL (5.14), bpf_loop (5.17) and bpf_map_lookup_percpu_elem (5.19);
 *   the agent probes for them before load and, without them, leaves the program unloaded
 *   and sums in user space as before (a cost, not a lost metric).
 * - The word loops are unrolled: a 1120-byte row costs ~95 ns per CPU instead of ~165 ns
 *   looped (2 CPUs, rows cache-hot), for 8.6 KB of program and about 11k
 *   instructions verified (22k looped, where the verifier walks every iteration).
 * - The sum is what a batched read would give, no more exact: the programs keep counting on
 *   other CPUs while it runs, so a row can include an update on one CPU and not an earlier
 *   one on another, as any read of a per-CPU table can.
 * - Only this program writes podnet_sums and podnet_peer_sums, and the agent runs it from
 *   one thread: plain stores, no atomics. Every field is a __u64: an output row is
 *   written word by word, CPU 0's copy stored (what the row held before is dropped, so it
 *   needs no zeroing first: clang has no memset for 1120 bytes) and every other CPU's added.
 * - podnet_ncpus is the number of possible CPUs, set by the agent before load (it checks
 *   that they are numbered 0 to n-1, as bpf_map_lookup_percpu_elem counts them).
 */
const volatile __u32 podnet_ncpus = 1;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PODNET_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct podnet_counters);
} podnet_sums SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PODNET_MAX_SLOTS + PODNET_PEER_ROWS);
	__type(key, __u32);
	__type(value, struct podnet_peer_counters);
} podnet_peer_sums SEC(".maps");

#define SLOT_WORDS	(sizeof(struct podnet_counters) / sizeof(__u64))
#define PEER_WORDS	(sizeof(struct podnet_peer_counters) / sizeof(__u64))

struct sum_state {
	__u32 first;	/* the first row (the outer loop's) */
	__u32 row;	/* the row being summed (the inner loop's) */
	__u32 rows;	/* rows summed so far: the program's result */
	__u32 failed;	/* a CPU's copy of the row was not found */
};

/* Add CPU cpu's copy of the row into its sum (bpf_loop callbacks: 0 goes on, 1 stops). */
static long sum_slot_cpu(__u64 cpu, void *data)
{
	struct sum_state *s = data;
	__u64 *in = bpf_map_lookup_percpu_elem(&podnet_stats, &s->row, cpu);
	__u64 *out = bpf_map_lookup_elem(&podnet_sums, &s->row);
	__u64 keep = cpu ? ~0ULL : 0;	/* CPU 0 overwrites: the row starts from zero */

	if (!in || !out) {
		s->failed = 1;
		return 1;
	}
#pragma unroll
	for (int i = 0; i < SLOT_WORDS; i++)
		out[i] = (out[i] & keep) + in[i];
	return 0;
}

static long sum_peer_cpu(__u64 cpu, void *data)
{
	struct sum_state *s = data;
	__u64 *in = bpf_map_lookup_percpu_elem(&podnet_peer_stats, &s->row, cpu);
	__u64 *out = bpf_map_lookup_elem(&podnet_peer_sums, &s->row);
	__u64 keep = cpu ? ~0ULL : 0;	/* CPU 0 overwrites: the row starts from zero */

	if (!in || !out) {
		s->failed = 1;
		return 1;
	}
#pragma unroll
	for (int i = 0; i < PEER_WORDS; i++)
		out[i] = (out[i] & keep) + in[i];
	return 0;
}

/* One row: every CPU's copy added into it; a row out of the table stops the loop. */
static long sum_slot(__u64 i, void *data)
{
	struct sum_state *s = data;

	s->row = s->first + (__u32)i;
	if (!bpf_map_lookup_elem(&podnet_sums, &s->row))
		return 1;
	bpf_loop(podnet_ncpus, sum_slot_cpu, s, 0);
	if (s->failed)
		return 1;
	s->rows++;
	return 0;
}

static long sum_peer(__u64 i, void *data)
{
	struct sum_state *s = data;

	s->row = s->first + (__u32)i;
	if (!bpf_map_lookup_elem(&podnet_peer_sums, &s->row))
		return 1;
	bpf_loop(podnet_ncpus, sum_peer_cpu, s, 0);
	if (s->failed)
		return 1;
	s->rows++;
	return 0;
}

/*
 * Returns the rows summed: args->count, or fewer where a row fell out of the table (or
 * a CPU's copy of it was not found); -1 for an unknown table.
 */
SEC("syscall")
int podnet_sum(struct podnet_sum_args *args)
{
	struct sum_state s = { .first = args->first };
	__u32 count = args->count;

	if (args->table == PODNET_SUM_SLOTS)
		bpf_loop(count, sum_slot, &s, 0);
	else if (args->table == PODNET_SUM_PEERS)
		bpf_loop(count, sum_peer, &s, 0);
	else
		return -1;
	return s.rows;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
