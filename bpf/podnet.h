/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * podnet.h: the ABI shared by the BPF programs and the Python agent.
 *
 * Every type here is made of fixed-width __u* fields with explicit padding, so that
 * otel_podnet/abi.py can mirror it with ctypes byte for byte. Change both together.
 */
#ifndef __PODNET_H
#define __PODNET_H

/*
 * Counting slots. A slot is a row of per-CPU counters; the agent maps slots to pods. The
 * sizes below are what the object is compiled with; the agent resizes the maps for the node
 * before load (otel_podnet/capacity.py) and sets podnet_max_slots to match.
 */
#define PODNET_MAX_SLOTS	4096
#define PODNET_SLOT_NODE	0	/* traffic of no pod, and overflow when slots run out */
#define PODNET_MAX_CGROUPS	65536
#define PODNET_MAX_POD_IPS	16384
#define PODNET_MAX_GONE		4096	/* cgroup removals queued between two collections */

/* podnet_cgroup.kind: what the agent knows of a cgroup. */
#define PODNET_CG_UNKNOWN	0	/* just seen by the kernel; the agent has not classified it */
#define PODNET_CG_POD		1	/* a pod's cgroup (pod level or a container below it) */
#define PODNET_CG_HOST		2	/* not a pod's: its sockets fall back to their local IP */

/* podnet_sock.flags */
#define PODNET_SK_RESOLVED	(1U << 0)	/* slot/gen are valid */
#define PODNET_SK_ESTABLISHED	(1U << 1)	/* counted as active (opened or adopted) */
#define PODNET_SK_INBOUND	(1U << 2)	/* direction of the counted connection */
#define PODNET_SK_FIN_RX	(1U << 3)	/* a FIN arrived: fin_seq is valid */
#define PODNET_SK_RX_MARK	(1U << 4)	/* seq_hw[PODNET_RX] is set */
#define PODNET_SK_REPLY		(1U << 5)	/* the kernel's TCP control socket: see count_skb */

enum podnet_dir { PODNET_OUTBOUND = 0, PODNET_INBOUND = 1, PODNET_NDIRS = 2 };

/*
 * Latency histograms (connect duration, smoothed RTT): bucket i counts values v with
 * 2^(i-1) us < v <= 2^i us (bucket 0: v <= 1 us), the last bucket everything above
 * 2^(PODNET_HIST_BUCKETS-2) us (67 s). Upper bounds inclusive, as OTLP explicit buckets
 * and Prometheus' le are. sum_ns is the exact sum of the values counted.
 */
#define PODNET_HIST_BUCKETS	28

struct podnet_hist {
	__u64 buckets[PODNET_HIST_BUCKETS];
	__u64 sum_ns;
};
enum podnet_io { PODNET_TX = 0, PODNET_RX = 1, PODNET_NIO = 2 };
enum podnet_transport { PODNET_TCP = 0, PODNET_UDP = 1, PODNET_NTRANSPORTS = 2 };
enum podnet_fail {
	PODNET_FAIL_REFUSED = 0,
	PODNET_FAIL_TIMEOUT = 1,
	PODNET_FAIL_UNREACHABLE = 2,
	PODNET_FAIL_RESET = 3,
	PODNET_FAIL_OTHER = 4,
	PODNET_NFAILS = 5,
};

/* Value of podnet_stats (per-CPU array indexed by slot). All counters only grow. */
struct podnet_counters {
	__u64 bytes[PODNET_NIO][PODNET_NTRANSPORTS];	/* IP bytes as on the wire */
	__u64 packets[PODNET_NIO][PODNET_NTRANSPORTS];	/* IP packets as on the wire */
	__u64 payload[PODNET_NIO];			/* TCP payload bytes */
	__u64 opened[PODNET_NDIRS];			/* reached ESTABLISHED */
	__u64 adopted[PODNET_NDIRS];			/* established before we saw it */
	__u64 closed[PODNET_NDIRS];			/* left ESTABLISHED (opened or adopted) */
	__u64 failed[PODNET_NFAILS];			/* outbound attempts that never established */
	__u64 retransmits;
	__u64 resets[PODNET_NIO];			/* RST segments sent / received */
	/* latency (issue 11): appended last, mirrored by abi.HISTOGRAMS */
	struct podnet_hist connect[PODNET_NDIRS];	/* SYN to ESTABLISHED */
	struct podnet_hist rtt[PODNET_NDIRS];		/* srtt at close, and once per interval */
};

/* Key of podnet_cgroups: the cgroup v2 id (the inode number of its directory). */
struct podnet_cgroup {
	__u32 slot;
	__u32 kind;	/* PODNET_CG_* */
};

/* Key of podnet_pod_ips: an address in IPv6 form, IPv4 as ::ffff:a.b.c.d. */
struct podnet_ip_key {
	__u8 addr[16];
};

struct podnet_ip_val {
	__u32 slot;
	__u32 pad;
};

/* Socket-local storage: what we resolved once for this socket. */
struct podnet_sock {
	__u32 slot;	/* where this socket's traffic is counted */
	__u32 gen;	/* podnet_gen when resolved; a change forces a re-resolve */
	__u32 flags;	/* PODNET_SK_* */
	__u32 fin_seq;	/* sequence number of the peer's FIN */
	/*
	 * The slot that counted this connection as opened (or adopted): its close is counted
	 * there too, whatever the socket resolves to later, so each slot's opened - closed is
	 * its own active connections. Valid while PODNET_SK_ESTABLISHED is set.
	 */
	__u32 open_slot;
	/*
	 * The marks below are written by egress on every data segment while ingress, often on
	 * the other CPU, reads the fields above on every packet: a cache line apart, so the
	 * writes do not pull the read-mostly line away from the receiving CPU.
	 */
	__u8 pad_line[44];
	/*
	 * TCP payload marks per direction (PODNET_TX/RX): bit 32 set = valid, low 32 bits =
	 * the sequence number after the last payload byte counted. Sent payload advances with
	 * the highest sequence sent (a retransmission adds nothing); received payload advances
	 * with rcv_nxt, the bytes delivered in order (duplicates and holes add nothing).
	 */
	__u64 seq_hw[2];
	/* latency (issue 11) */
	__u64 syn_ns;		/* outbound: when its first SYN left (skb->tstamp) */
	__u64 rtt_next_ns;	/* the next periodic RTT sample is due (skb->tstamp clock) */
	/* peers (issue 12): the row of podnet_peer_stats this socket's traffic goes to,
	 * resolved with slot/gen; PODNET_PEER_NONE: looked up per packet (see podnet.bpf.c) */
	__u32 peer_row;
	__u32 peer_pad;
	/* exact retransmits and state changes (see podnet_retrans, podnet_state2) */
	__u32 retrans_seen;	/* the socket's tcp_sock.total_retrans already counted */
	__u32 ev_note;		/* PODNET_EV_NOTE of the state change podnet_state counted last */
};

/* podnet_sock.ev_note: a state change (never 0) */
#define PODNET_EV_NOTE(oldstate, newstate)	(0x10000U | ((__u32)(oldstate) << 8) | (__u32)(newstate))

/* Agent health counters (podnet_health, per-CPU array). */
enum podnet_health {
	PODNET_H_SLOTS_EXHAUSTED = 0,	/* a new cgroup found no free slot: counted as node */
	PODNET_H_CGROUPS_FULL = 1,	/* podnet_cgroups was full */
	PODNET_H_NO_STORAGE = 2,	/* socket storage could not be allocated */
	PODNET_H_SLOTS_ALLOCATED = 3,	/* slots the kernel took from the free queue */
	PODNET_H_PEERS_FULL = 4,	/* no free peer row: counted in the slot's overflow row */
	PODNET_H_GONE_LOST = 5,		/* podnet_cgroups_gone was full: a removal not queued */
	PODNET_NHEALTH = 6,
};

/* Settings, written by the agent into .rodata before load. */
struct podnet_config {
	__u16 ephemeral_lo;	/* ip_local_port_range, to tell the direction of adopted */
	__u16 ephemeral_hi;	/* connections (established before the agent) */
	__u32 pad;
};

/*
 * Peers (issue 12): bytes and connections per (slot, remote address). Rows of
 * podnet_peer_stats (per-CPU): rows [0, podnet_max_slots) are each slot's overflow row
 * (traffic that found no free row: summed as kind=other by the agent, so totals stay
 * exact); rows from podnet_max_slots on are taken from the podnet_peer_free queue, one per
 * (slot, remote address) in podnet_peer_idx, and described in podnet_peer_owner. The
 * agent frees idle rows and the rows of retired slots.
 */
#define PODNET_PEER_ROWS	8192		/* allocatable rows compiled in; resized at load */
#define PODNET_PEER_NONE	0xffffffffU	/* podnet_sock.peer_row: not cached */

struct podnet_peer_counters {
	__u64 bytes[PODNET_NIO];	/* IP bytes as podnet_counters.bytes counts them, TCP+UDP */
	__u64 opened[PODNET_NDIRS];	/* reached ESTABLISHED */
	__u64 failed[PODNET_NFAILS];	/* outbound attempts that never established */
};

/* Key of podnet_peer_idx: a slot and a remote address (podnet_ip_key form). */
struct podnet_peer_key {
	__u32 slot;
	__u32 pad;
	__u8 addr[16];
};

struct podnet_peer_val {
	__u32 row;
	__u32 pad;
};

/* Value of podnet_peer_owner (indexed by row): what a taken row counts. */
struct podnet_peer_owner {
	__u32 slot;
	__u32 used;	/* 1 while the row is taken */
	__u8 addr[16];
};

/*
 * Kernel-side sums (issue 10): podnet_sum, a BPF_PROG_TYPE_SYSCALL program the agent runs
 * with BPF_PROG_TEST_RUN, writes rows [first, first + count) of a per-CPU table, each summed
 * over every possible CPU, into the same rows of a plain array (podnet_sums for
 * podnet_stats, podnet_peer_sums for podnet_peer_stats). This is its context (ctx_in).
 */
#define PODNET_SUM_SLOTS	0	/* podnet_stats into podnet_sums */
#define PODNET_SUM_PEERS	1	/* podnet_peer_stats into podnet_peer_sums */

struct podnet_sum_args {
	__u32 table;	/* PODNET_SUM_* */
	__u32 first;	/* the first row summed */
	__u32 count;	/* rows summed from it */
};

#endif /* __PODNET_H */
