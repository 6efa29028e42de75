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
//      count == 0 -> TC_ACT_SHOT (TODO: SVC_F_REJECT -> ICMP port unreachable / TCP RST).
//      slot = bpf_get_prandom_u32() % count, backend = `backends`[{service id, slot}].
//   4. record `affinity` (original tuple -> backend) and `conntrack` (tuple after NAT ->
//      original vip/port), then rewrite daddr/dport with incremental checksum updates.
// svc_nat_rev  (pod-facing veth egress = packets towards the pod):
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

#define SVC_F_REJECT 0x1 /* reserved: reject instead of drop when count == 0 */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct svc_key {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_value {
	__u16 count;
	__u16 flags;
	__u32 service_id;
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
	__u16 pad;
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
	__u32 ip;
	__u16 port;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;

	sk.vip = p.tuple.daddr;
	sk.port = p.tuple.dport;
	sk.proto = p.tuple.proto;
	svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return TC_ACT_OK;
	if (svc->count == 0)
		return TC_ACT_SHOT;

	/* Keep established flows on their backend while its slot still holds it. */
	aff = bpf_map_lookup_elem(&affinity, &p.tuple);
	if (aff && aff->service_id == svc->service_id && aff->slot < svc->count) {
		bk.service_id = aff->service_id;
		bk.slot = aff->slot;
		be = bpf_map_lookup_elem(&backends, &bk);
		if (be && be->ip == aff->ip && be->port == aff->port)
			goto found;
	}

	bk.service_id = svc->service_id;
	bk.slot = bpf_get_prandom_u32() % svc->count;
	be = bpf_map_lookup_elem(&backends, &bk);
	if (!be)
		return TC_ACT_SHOT; /* table mid-update: count raised before its slot was written */
	new_aff.service_id = bk.service_id;
	new_aff.slot = bk.slot;
	new_aff.ip = be->ip;
	new_aff.port = be->port;
	bpf_map_update_elem(&affinity, &p.tuple, &new_aff, BPF_ANY);

found:
	ip = be->ip;
	port = be->port;
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
