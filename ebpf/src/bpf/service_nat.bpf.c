// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// netlet service NAT datapath: IPv4 TCP/UDP DNAT of service VIPs to backends, and the reverse
// SNAT of replies, as two tc (clsact, direct-action) classifiers.
//
// svc_nat_fwd  (pod-facing veth ingress = packets leaving the pod):
//   1. parse Ethernet + IPv4 (+options) + TCP/UDP; anything else -> TC_ACT_OK untouched.
//   2. `affinity` hit on the original 5-tuple whose backend slot is still valid -> reuse it, so
//      every packet of a connection goes to the same backend.
//   3. otherwise look up `services` {vip, port, proto}; miss -> TC_ACT_OK untouched.
//      count == 0 -> reject: the packet is rewritten in place into a TCP RST (for TCP) or an
//      ICMP port unreachable (for UDP) from the VIP and bpf_redirect()ed back out the interface
//      it came in on (see reject_tcp / reject_udp).
//      slot = bpf_get_prandom_u32() % count, backend = `backends`[{service id, slot}]; with
//      sessionAffinity ClientIP (affinity_timeout != 0) a new flow of a client seen within the
//      timeout reuses the slot in `client_affinity`[{client, service id}] if it still holds the
//      same backend, and every new flow stamps the client with bpf_ktime_get_ns().
//   4. record `affinity` (original tuple -> backend) and `conntrack` (tuple after NAT ->
//      original vip/port), then rewrite daddr/dport with incremental checksum updates.
//   Masquerade (SNAT to the node's `config.snat_ip`) applies to: clients outside the cluster
//   CIDRs, every client of a frontend flagged SVC_F_MASQ_ALL (node ports, external and
//   load-balancer IPs with externalTrafficPolicy Cluster), and hairpin (the client is the chosen
//   backend). The source port is kept unless another client holds it towards the same backend.
//   `snat`[tuple after NAT] remembers the client; such packets leave by bpf_redirect_neigh()
//   towards the backend, since a packet from a local address would be dropped as martian by
//   the routing input path. Their replies (to snat_ip) are recognised first thing in
//   svc_nat_fwd, wherever they enter, translated back and redirected to the client the same
//   way.
//   externalTrafficPolicy Local: the frontend has a second entry with scope SCOPE_OFF_CLUSTER
//   (node-local backends, SVC_F_KEEP_SOURCE) that off-cluster clients use; its replies are
//   translated by svc_nat_rev on the uplink's egress.
// svc_nat_rev  (pod-facing veth egress = packets towards the pod; uplink egress):
//   a reply from backend:bport to client:cport finds `conntrack`[{client, backend, cport,
//   bport, proto}] and gets its source rewritten back to vip:port.
//
// All addresses and ports in map keys and values are in network byte order, exactly as they
// appear on the wire. The Rust mirror of every struct is in src/maps.rs (size-asserted there).

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define REPLY_TTL 64
/* <linux/icmp.h> pulls in libc headers that do not build for the bpf target. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 unused;
};
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* svc_key.scope: which clients an entry serves. */
#define SCOPE_ANY 0
#define SCOPE_OFF_CLUSTER 1

/* svc_value.flags */
#define SVC_F_MASQ_ALL 1 /* masquerade every client (external frontend, policy Cluster) */
#define SVC_F_OFF_CLUSTER_VARIANT 2 /* a SCOPE_OFF_CLUSTER entry exists for off-cluster clients */
#define SVC_F_KEEP_SOURCE 4 /* never masquerade (externalTrafficPolicy Local) */

#define MAX_CLUSTER_CIDRS 4
#define SNAT_PORT_TRIES 4
#define SNAT_PORT_MIN 32768
#define SNAT_PORT_RANGE 28232 /* 32768..60999, Linux's default ephemeral range */
#ifndef AF_INET
#define AF_INET 2
#endif

struct svc_key {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 scope;
};

struct svc_value {
	__u16 count;
	__u16 flags;
	__u32 service_id;
	__u32 affinity_timeout; /* sessionAffinity ClientIP timeout in seconds; 0: none */
};

struct backend_key {
	__u32 service_id;
	__u32 slot;
};

struct backend_value {
	__u32 ip;
	__u16 port;
	__u16 pad;
};

/* A connection as seen on the wire in the client -> server direction. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* conntrack value: what the client originally addressed. */
struct ct_value {
	__u32 vip;
	__u16 port;
	__u16 pad;
};

/* affinity value: the backend chosen for an original (pre-NAT) tuple. */
struct affinity_value {
	__u32 service_id;
	__u32 slot;
	__u32 ip;
	__u16 port;
	__u16 snat_port; /* masqueraded flows: the source port towards the backend; 0: not SNATed */
};

/* snat value: who a masqueraded connection really is, keyed by the tuple after NAT. */
struct snat_value {
	__u32 client;
	__u32 vip;
	__u16 client_port;
	__u16 vip_port;
};

struct cidr {
	__u32 addr;
	__u32 mask;
};

/* The node's settings, written by userspace: config[0]. */
struct config {
	__u32 snat_ip; /* masquerade address (the node's pod-bridge address); 0: none */
	__u32 n_cidrs;
	struct cidr cidrs[MAX_CLUSTER_CIDRS]; /* cluster CIDRs: sources inside are pods */
};

/* sessionAffinity ClientIP: which backend a client was last sent to in a service, and when. */
struct client_key {
	__u32 client;
	__u32 service_id;
};

struct client_value {
	__u32 slot;
	__u32 ip;
	__u16 port;
	__u16 pad;
	__u32 pad2;
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the client's last new flow */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct affinity_value);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct client_key);
	__type(value, struct client_value);
} client_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct snat_value);
} snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct pkt {
	__u32 l3_off; /* offset of the IPv4 header */
	__u32 l4_off; /* offset of the TCP/UDP header */
	__u32 csum_off; /* offset of the L4 checksum field */
	__u32 csum_flags; /* extra flags for bpf_l4_csum_replace */
	struct ct_key tuple;
};

/* Parses Ethernet + IPv4 + TCP/UDP. Returns 0 when the packet is one we may rewrite. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth;
	struct iphdr ip;
	__u16 ports[2];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	if (eth.h_proto != bpf_htons(ETH_P_IP))
		return -1;
	p->l3_off = sizeof(eth);
	if (bpf_skb_load_bytes(skb, p->l3_off, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	/* Only first fragments carry ports; later ones pass untouched (not NATed: documented). */
	if (ip.frag_off & bpf_htons(IP_OFFSET))
		return -1;
	p->l4_off = p->l3_off + ip.ihl * 4;
	if (ip.protocol == IPPROTO_TCP) {
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
		p->csum_flags = 0;
	} else if (ip.protocol == IPPROTO_UDP) {
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
		/* A zero UDP checksum means "none" and must stay zero; a computed zero becomes 0xffff. */
		p->csum_flags = BPF_F_MARK_MANGLED_0;
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	__builtin_memset(&p->tuple, 0, sizeof(p->tuple));
	p->tuple.saddr = ip.saddr;
	p->tuple.daddr = ip.daddr;
	p->tuple.sport = ports[0];
	p->tuple.dport = ports[1];
	p->tuple.proto = ip.protocol;
	return 0;
}

/* Rewrites the address at `addr_off` and the port at `port_off`, fixing both checksums. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 addr_off,
				   __u32 old_ip, __u32 new_ip, __u32 port_off, __u16 old_port,
				   __u16 new_port)
{
	__u32 l3_csum_off = p->l3_off + offsetof(struct iphdr, check);

	if (old_ip != new_ip) {
		if (bpf_l4_csum_replace(skb, p->csum_off, old_ip, new_ip,
					p->csum_flags | BPF_F_PSEUDO_HDR | sizeof(new_ip)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, l3_csum_off, old_ip, new_ip, sizeof(new_ip)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_ip, sizeof(new_ip), 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, p->csum_off, old_port, new_port,
					p->csum_flags | sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return -1;
	}
	return 0;
}

/* Folds a bpf_csum_diff() sum into the 16-bit one's complement checksum to store as is. */
static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* The reply's Ethernet + IPv4 header (no options) for a packet `in` answered from its own
 * destination: MACs and addresses swapped, fresh TTL and id, checksum computed. */
static __always_inline int reply_l2_l3(struct __sk_buff *skb, const struct pkt *p,
				       struct iphdr *out, __u8 proto, __u16 l4_len)
{
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	__builtin_memcpy(mac, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, mac, ETH_ALEN);

	__builtin_memset(out, 0, sizeof(*out));
	out->version = 4;
	out->ihl = 5;
	out->tot_len = bpf_htons(sizeof(*out) + l4_len);
	out->frag_off = bpf_htons(0x4000); /* DF */
	out->ttl = REPLY_TTL;
	out->protocol = proto;
	out->saddr = p->tuple.daddr;
	out->daddr = p->tuple.saddr;
	out->check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)out, sizeof(*out), 0));

	/* Resize first (the headers are read already), then write the new headers. */
	if (bpf_skb_change_tail(skb, sizeof(eth) + sizeof(*out) + l4_len, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, sizeof(eth), out, sizeof(*out), 0) < 0)
		return -1;
	return 0;
}

/* TCP pseudo header for the checksum. */
struct pseudo_hdr {
	__u32 saddr;
	__u32 daddr;
	__u8 zero;
	__u8 proto;
	__u16 len;
};

/* Turns a TCP segment to a service without endpoints into the RST a closed port answers with
 * (RFC 9293 3.10.7.1) and sends it back towards the client. RSTs are never answered. */
static __always_inline int reject_tcp(struct __sk_buff *skb, const struct pkt *p)
{
	struct iphdr ip_in;
	struct tcphdr in;
	struct tcphdr out = {};
	struct iphdr ip_out;
	struct pseudo_hdr ph = {};
	__u8 flags;
	__u32 payload;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, p->l3_off, &ip_in, sizeof(ip_in)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, p->l4_off, &in, sizeof(in)) < 0)
		return TC_ACT_SHOT;
	flags = ((__u8 *)&in)[13];
	if (flags & TCP_FLAG_RST)
		return TC_ACT_SHOT;
	payload = bpf_ntohs(ip_in.tot_len) - ip_in.ihl * 4 - in.doff * 4;
	out.source = in.dest;
	out.dest = in.source;
	out.doff = 5;
	out.rst = 1;
	if (flags & TCP_FLAG_ACK) {
		out.seq = in.ack_seq;
	} else {
		out.ack = 1;
		payload += (flags & TCP_FLAG_SYN) ? 1 : 0;
		payload += (flags & TCP_FLAG_FIN) ? 1 : 0;
		out.ack_seq = bpf_htonl(bpf_ntohl(in.seq) + payload);
	}
	ph.saddr = p->tuple.daddr;
	ph.daddr = p->tuple.saddr;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(sizeof(out));
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&out, sizeof(out), sum);
	out.check = csum_fold(sum);

	if (reply_l2_l3(skb, p, &ip_out, IPPROTO_TCP, sizeof(out)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + sizeof(ip_out), &out, sizeof(out),
				0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* What an ICMP error quotes: the offending IPv4 header (no options) and 8 bytes of it. */
struct icmp_quote {
	struct iphdr ip;
	__u8 l4[8];
};

/* Turns a UDP datagram to a service without endpoints into the ICMP port unreachable a closed
 * port answers with and sends it back towards the client. Datagrams with IP options are
 * dropped instead (the quote would not fit the fixed layout). */
static __always_inline int reject_udp(struct __sk_buff *skb, const struct pkt *p)
{
	struct icmphdr icmp = {};
	struct icmp_quote quote;
	struct iphdr ip_out;
	__s64 sum;

	if (p->l4_off != p->l3_off + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, p->l3_off, &quote, sizeof(quote)) < 0)
		return TC_ACT_SHOT;
	icmp.type = ICMP_DEST_UNREACH;
	icmp.code = ICMP_PORT_UNREACH;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&icmp, sizeof(icmp), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&quote, sizeof(quote), sum);
	icmp.checksum = csum_fold(sum);

	if (reply_l2_l3(skb, p, &ip_out, IPPROTO_ICMP, sizeof(icmp) + sizeof(quote)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + sizeof(ip_out), &icmp, sizeof(icmp),
				0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + sizeof(ip_out) + sizeof(icmp), &quote,
				sizeof(quote), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* Whether `ip` is outside every cluster CIDR (no CIDRs configured: nobody is). */
static __always_inline int off_cluster(const struct config *cfg, __u32 ip)
{
	if (!cfg || cfg->n_cidrs == 0)
		return 0;
#pragma unroll
	for (int i = 0; i < MAX_CLUSTER_CIDRS; i++) {
		if (i < cfg->n_cidrs && (ip & cfg->cidrs[i].mask) == cfg->cidrs[i].addr)
			return 0;
	}
	return 1;
}

/* Sends a translated packet on its way as if routed: the FIB names the egress device and the
 * neighbour subsystem the MACs. Needed wherever the new source is a local address (the routing
 * input path would drop it as martian). If the FIB has no answer the kernel routes it. */
static __always_inline int route_out(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u8 proto)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	fib.family = AF_INET;
	fib.l4_protocol = proto;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
}

/* A reply to a masqueraded connection (addressed to snat_ip): back to vip -> client. */
static __always_inline int unsnat_reply(struct __sk_buff *skb, const struct pkt *p)
{
	struct ct_key k = {};
	struct snat_value *s;
	__u32 vip, client;
	__u16 vport, cport;

	k.saddr = p->tuple.daddr;
	k.daddr = p->tuple.saddr;
	k.sport = p->tuple.dport;
	k.dport = p->tuple.sport;
	k.proto = p->tuple.proto;
	s = bpf_map_lookup_elem(&snat, &k);
	if (!s)
		return -1;
	vip = s->vip;
	vport = s->vip_port;
	client = s->client;
	cport = s->client_port;
	if (rewrite(skb, p, p->l3_off + offsetof(struct iphdr, saddr), p->tuple.saddr, vip,
		    p->l4_off, p->tuple.sport, vport) < 0)
		return TC_ACT_SHOT;
	if (rewrite(skb, p, p->l3_off + offsetof(struct iphdr, daddr), p->tuple.daddr, client,
		    p->l4_off + 2, p->tuple.dport, cport) < 0)
		return TC_ACT_SHOT;
	return route_out(skb, vip, client, p->tuple.proto);
}

/* Claims a source port on snat_ip towards backend ip:port for the client's original tuple:
 * its own port if free (or already its own), else a few random ones. 0: none found. */
static __always_inline __u16 snat_claim(const struct pkt *p, __u32 snat_ip, __u32 ip, __u16 port,
					__u16 want)
{
	struct ct_key k = {};
	struct snat_value v = {};
	struct snat_value *cur;

	k.saddr = snat_ip;
	k.daddr = ip;
	k.dport = port;
	k.proto = p->tuple.proto;
	v.client = p->tuple.saddr;
	v.client_port = p->tuple.sport;
	v.vip = p->tuple.daddr;
	v.vip_port = p->tuple.dport;
#pragma unroll
	for (int i = 0; i <= SNAT_PORT_TRIES; i++) {
		if (i == 0 && want)
			k.sport = want;
		else if (i == 0)
			k.sport = p->tuple.sport;
		else
			k.sport = bpf_htons(SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_RANGE);
		cur = bpf_map_lookup_elem(&snat, &k);
		if (cur) {
			if (cur->client == v.client && cur->client_port == v.client_port &&
			    cur->vip == v.vip && cur->vip_port == v.vip_port)
				return k.sport;
			continue;
		}
		if (bpf_map_update_elem(&snat, &k, &v, BPF_NOEXIST) == 0)
			return k.sport;
	}
	return 0;
}

/* Whether a new flow of this client to this backend is masqueraded (see the header). */
static __always_inline int needs_masquerade(const struct svc_value *svc, int off,
					    const struct pkt *p, __u32 backend_ip)
{
	if (svc->flags & SVC_F_KEEP_SOURCE)
		return 0;
	return off || (svc->flags & SVC_F_MASQ_ALL) || backend_ip == p->tuple.saddr;
}

SEC("classifier/svc_nat_fwd")
int svc_nat_fwd(struct __sk_buff *skb)
{
	struct pkt p;
	struct svc_key sk = {};
	struct svc_value *svc;
	struct backend_key bk = {};
	struct backend_value *be;
	struct affinity_value *aff;
	struct affinity_value new_aff = {};
	struct ct_key nat = {};
	struct ct_value orig = {};
	struct ct_value *ct;
	struct client_key ck = {};
	struct client_value *cv;
	struct client_value new_cv = {};
	struct svc_value *local_svc;
	struct config *cfg;
	__u32 zero = 0;
	__u64 now = 0;
	__u32 ip;
	__u16 port;
	__u16 snat_port = 0;
	int off, ret;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && cfg->snat_ip && p.tuple.daddr == cfg->snat_ip) {
		ret = unsnat_reply(skb, &p);
		if (ret >= 0)
			return ret;
	}

	sk.vip = p.tuple.daddr;
	sk.port = p.tuple.dport;
	sk.proto = p.tuple.proto;
	svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return TC_ACT_OK;
	off = off_cluster(cfg, p.tuple.saddr);
	if (off && (svc->flags & SVC_F_OFF_CLUSTER_VARIANT)) {
		sk.scope = SCOPE_OFF_CLUSTER;
		local_svc = bpf_map_lookup_elem(&services, &sk);
		if (local_svc)
			svc = local_svc;
	}
	if (svc->count == 0)
		return p.tuple.proto == IPPROTO_TCP ? reject_tcp(skb, &p) : reject_udp(skb, &p);

	/* Keep established flows on their backend while its slot still holds it. */
	aff = bpf_map_lookup_elem(&affinity, &p.tuple);
	if (aff && aff->service_id == svc->service_id && aff->slot < svc->count) {
		bk.service_id = aff->service_id;
		bk.slot = aff->slot;
		snat_port = aff->snat_port;
		be = bpf_map_lookup_elem(&backends, &bk);
		if (be && be->ip == aff->ip && be->port == aff->port)
			goto found;
		snat_port = 0;
	}

	bk.service_id = svc->service_id;
	be = NULL;
	if (svc->affinity_timeout) {
		/* A new flow of a client seen within the timeout goes where its last one went,
		 * while that backend still holds its slot; either way the client is (re)stamped. */
		ck.client = p.tuple.saddr;
		ck.service_id = svc->service_id;
		now = bpf_ktime_get_ns();
		cv = bpf_map_lookup_elem(&client_affinity, &ck);
		if (cv && now - cv->last_seen_ns < (__u64)svc->affinity_timeout * 1000000000ULL &&
		    cv->slot < svc->count) {
			bk.slot = cv->slot;
			be = bpf_map_lookup_elem(&backends, &bk);
			if (be && (be->ip != cv->ip || be->port != cv->port))
				be = NULL;
		}
	}
	if (!be) {
		bk.slot = bpf_get_prandom_u32() % svc->count;
		be = bpf_map_lookup_elem(&backends, &bk);
		if (!be)
			return TC_ACT_SHOT; /* table mid-update: count raised before its slot was written */
	}
	if (svc->affinity_timeout) {
		new_cv.slot = bk.slot;
		new_cv.ip = be->ip;
		new_cv.port = be->port;
		new_cv.last_seen_ns = now;
		bpf_map_update_elem(&client_affinity, &ck, &new_cv, BPF_ANY);
	}
	new_aff.service_id = bk.service_id;
	new_aff.slot = bk.slot;
	new_aff.ip = be->ip;
	new_aff.port = be->port;
	if (needs_masquerade(svc, off, &p, be->ip)) {
		if (!cfg || !cfg->snat_ip)
			return TC_ACT_SHOT;
		new_aff.snat_port = snat_claim(&p, cfg->snat_ip, be->ip, be->port, 0);
		if (!new_aff.snat_port)
			return TC_ACT_SHOT; /* no free source port: like a full NAT table */
	}
	bpf_map_update_elem(&affinity, &p.tuple, &new_aff, BPF_ANY);
	snat_port = new_aff.snat_port;

found:
	ip = be->ip;
	port = be->port;
	if (snat_port) {
		/* Re-claim on every packet: the LRU may have evicted the entry meanwhile. */
		if (!cfg || !cfg->snat_ip)
			return TC_ACT_SHOT;
		if (snat_claim(&p, cfg->snat_ip, ip, port, snat_port) != snat_port)
			return TC_ACT_SHOT;
		if (rewrite(skb, &p, p.l3_off + offsetof(struct iphdr, saddr), p.tuple.saddr,
			    cfg->snat_ip, p.l4_off, p.tuple.sport, snat_port) < 0)
			return TC_ACT_SHOT;
		if (rewrite(skb, &p, p.l3_off + offsetof(struct iphdr, daddr), p.tuple.daddr, ip,
			    p.l4_off + 2, p.tuple.dport, port) < 0)
			return TC_ACT_SHOT;
		return route_out(skb, cfg->snat_ip, ip, p.tuple.proto);
	}
	nat = p.tuple;
	nat.daddr = ip;
	nat.dport = port;
	/* Established flows find their entry in place: a lookup is much cheaper than an LRU update. */
	ct = bpf_map_lookup_elem(&conntrack, &nat);
	if (!ct || ct->vip != p.tuple.daddr || ct->port != p.tuple.dport) {
		orig.vip = p.tuple.daddr;
		orig.port = p.tuple.dport;
		bpf_map_update_elem(&conntrack, &nat, &orig, BPF_ANY);
	}

	if (rewrite(skb, &p, p.l3_off + offsetof(struct iphdr, daddr), p.tuple.daddr, ip,
		    p.l4_off + 2, p.tuple.dport, port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier/svc_nat_rev")
int svc_nat_rev(struct __sk_buff *skb)
{
	struct pkt p;
	struct ct_key k = {};
	struct ct_value *orig;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;

	/* The reply's tuple, turned around into the client -> backend direction. */
	k.saddr = p.tuple.daddr;
	k.daddr = p.tuple.saddr;
	k.sport = p.tuple.dport;
	k.dport = p.tuple.sport;
	k.proto = p.tuple.proto;
	orig = bpf_map_lookup_elem(&conntrack, &k);
	if (!orig)
		return TC_ACT_OK;

	if (rewrite(skb, &p, p.l3_off + offsetof(struct iphdr, saddr), p.tuple.saddr, orig->vip,
		    p.l4_off, p.tuple.sport, orig->port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
