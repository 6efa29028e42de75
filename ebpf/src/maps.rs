//! Map keys and values: `#[repr(C)]` mirrors of the structs in `bpf/service_nat.bpf.c`.
//!
//! Field order, widths and padding match the C definitions exactly; the compile-time size
//! asserts at the bottom catch a drift on either side. Addresses and ports are stored in
//! network byte order (as they are on the wire and in the C program); the constructors and
//! accessors convert from and to [`Ipv4Addr`] and host-order ports.

// `aya::Pod` is an unsafe marker trait; this module is the only place that implements it.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;

/// Map names as declared in the C object.
pub mod names {
    /// `services`: [`super::SvcKey`] -> [`super::SvcValue`].
    pub const SERVICES: &str = "services";
    /// `backends`: [`super::BackendKey`] -> [`super::BackendValue`].
    pub const BACKENDS: &str = "backends";
    /// `conntrack` (LRU): [`super::CtKey`] after NAT -> [`super::CtValue`] (the original VIP).
    pub const CONNTRACK: &str = "conntrack";
    /// `affinity` (LRU): [`super::CtKey`] before NAT -> [`super::AffinityValue`].
    pub const AFFINITY: &str = "affinity";
    /// `client_affinity` (LRU): [`super::ClientKey`] -> [`super::ClientValue`], for
    /// `sessionAffinity: ClientIP`.
    pub const CLIENT_AFFINITY: &str = "client_affinity";
    /// `snat` (LRU): [`super::CtKey`] after masquerading -> [`super::SnatValue`] (the client).
    pub const SNAT: &str = "snat";
    /// `config` (array of one): [`super::Config`], the node's masquerade address and CIDRs.
    pub const CONFIG: &str = "config";
}

/// [`SvcKey::scope`] values: which clients a `services` entry serves.
pub mod scope {
    /// Every client (or every client without a more specific entry).
    pub const ANY: u8 = 0;
    /// Clients outside the cluster CIDRs, where the frontend's entry with [`ANY`] has
    /// [`super::flags::OFF_CLUSTER_VARIANT`] (`externalTrafficPolicy: Local`).
    pub const OFF_CLUSTER: u8 = 1;
}

/// [`SvcValue::flags`] bits.
pub mod flags {
    /// Masquerade every client: a node port, external or load-balancer IP with
    /// `externalTrafficPolicy: Cluster`, as kube-proxy does.
    pub const MASQ_ALL: u16 = 1;
    /// Off-cluster clients use the frontend's [`super::scope::OFF_CLUSTER`] entry.
    pub const OFF_CLUSTER_VARIANT: u16 = 2;
    /// Never masquerade: off-cluster clients of `externalTrafficPolicy: Local` keep their
    /// address; replies are translated on the uplink's egress.
    pub const KEEP_SOURCE: u16 = 4;
}

/// How many cluster CIDRs [`Config`] holds.
pub const MAX_CLUSTER_CIDRS: usize = 4;

/// The L4 protocols the datapath translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The protocol of an IP protocol number, if the datapath translates it.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip_from_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// Key of `services`: `struct svc_key { u32 vip; u16 port; u8 proto; u8 scope; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// VIP, network byte order.
    pub vip: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Which clients the entry serves ([`scope`]).
    pub scope: u8,
}

impl SvcKey {
    /// The key for `vip:port/proto` (port in host order), serving every client.
    pub fn new(vip: Ipv4Addr, port: u16, proto: Proto) -> Self {
        Self {
            vip: ip_be(vip),
            port: port.to_be(),
            proto: proto.number(),
            scope: scope::ANY,
        }
    }

    /// The same frontend's entry for off-cluster clients ([`scope::OFF_CLUSTER`]).
    pub fn off_cluster(self) -> Self {
        Self {
            scope: scope::OFF_CLUSTER,
            ..self
        }
    }

    /// The protocol, if the datapath knows it.
    pub fn proto(&self) -> Option<Proto> {
        Proto::from_number(self.proto)
    }

    /// The VIP.
    pub fn vip(&self) -> Ipv4Addr {
        ip_from_be(self.vip)
    }

    /// The port in host order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Value of `services`:
/// `struct svc_value { u16 count; u16 flags; u32 service_id; u32 affinity_timeout; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcValue {
    /// Number of backends; slots `0..count` of `backends` are valid. 0 rejects: TCP gets a
    /// reset, UDP an ICMP port unreachable, both from the VIP.
    pub count: u16,
    /// [`flags`] bits.
    pub flags: u16,
    /// Service id, the first half of a [`BackendKey`].
    pub service_id: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 balances every new flow afresh.
    pub affinity_timeout: u32,
}

/// Key of `backends`: `struct backend_key { u32 service_id; u32 slot; }` (host order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// The service's id.
    pub service_id: u32,
    /// Slot in `0..count`.
    pub slot: u32,
}

/// Value of `backends`: `struct backend_value { u32 ip; u16 port; u16 pad; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Backend address, network byte order.
    pub ip: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

impl BackendValue {
    /// The value for `ip:port` (port in host order).
    pub fn new(ip: Ipv4Addr, port: u16) -> Self {
        Self {
            ip: ip_be(ip),
            port: port.to_be(),
            pad: 0,
        }
    }

    /// The backend address.
    pub fn ip(&self) -> Ipv4Addr {
        ip_from_be(self.ip)
    }

    /// The backend port in host order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Key of `conntrack` and `affinity`: a connection in the client -> server direction,
/// `struct ct_key { u32 saddr, daddr; u16 sport, dport; u8 proto; u8 pad[3]; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

impl CtKey {
    /// The key for `saddr:sport -> daddr:dport/proto` (ports in host order).
    pub fn new(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16, proto: Proto) -> Self {
        Self {
            saddr: ip_be(saddr),
            daddr: ip_be(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: proto.number(),
            pad: [0; 3],
        }
    }
}

/// Value of `conntrack`: `struct ct_value { u32 vip; u16 port; u16 pad; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// The VIP the client addressed, network byte order.
    pub vip: u32,
    /// The service port the client addressed, network byte order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

impl CtValue {
    /// The VIP.
    pub fn vip(&self) -> Ipv4Addr {
        ip_from_be(self.vip)
    }

    /// The service port in host order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Value of `affinity`:
/// `struct affinity_value { u32 service_id, slot, ip; u16 port; u16 snat_port; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// Service id the flow was balanced in.
    pub service_id: u32,
    /// Slot chosen; reused while `backends[{service_id, slot}]` still holds `ip:port`.
    pub slot: u32,
    /// Backend address, network byte order.
    pub ip: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Masqueraded flows: the source port towards the backend, network byte order; 0: none.
    pub snat_port: u16,
}

/// Value of `snat`: `struct snat_value { u32 client, vip; u16 client_port, vip_port; }`, the
/// client behind a masqueraded connection and what it addressed.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnatValue {
    /// Client address, network byte order.
    pub client: u32,
    /// The frontend address the client addressed, network byte order.
    pub vip: u32,
    /// Client port, network byte order.
    pub client_port: u16,
    /// Frontend port, network byte order.
    pub vip_port: u16,
}

impl SnatValue {
    /// The client as `(ip, host-order port)`.
    pub fn client(&self) -> (Ipv4Addr, u16) {
        (ip_from_be(self.client), u16::from_be(self.client_port))
    }

    /// The frontend as `(ip, host-order port)`.
    pub fn frontend(&self) -> (Ipv4Addr, u16) {
        (ip_from_be(self.vip), u16::from_be(self.vip_port))
    }
}

/// A cluster CIDR in `config`: `struct cidr { u32 addr, mask; }`, both network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cidr {
    /// Network address (already masked).
    pub addr: u32,
    /// Netmask.
    pub mask: u32,
}

/// Value of `config[0]`:
/// `struct config { u32 snat_ip; u32 n_cidrs; struct cidr cidrs[MAX_CLUSTER_CIDRS]; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Config {
    /// Masquerade address (network byte order); 0: masquerading drops the packet.
    pub snat_ip: u32,
    /// How many of `cidrs` are set.
    pub n_cidrs: u32,
    /// Cluster CIDRs: sources inside them are pods, the rest off-cluster clients.
    pub cidrs: [Cidr; MAX_CLUSTER_CIDRS],
}

impl Config {
    /// The config for masquerade address `snat_ip` and cluster CIDRs `(network, prefix)`;
    /// `None` when there are more than [`MAX_CLUSTER_CIDRS`] CIDRs.
    pub fn new(snat_ip: Option<Ipv4Addr>, cidrs: &[(Ipv4Addr, u8)]) -> Option<Self> {
        if cidrs.len() > MAX_CLUSTER_CIDRS {
            return None;
        }
        let mut c = Config {
            snat_ip: snat_ip.map_or(0, ip_be),
            n_cidrs: cidrs.len() as u32,
            ..Config::default()
        };
        for (slot, (net, prefix)) in c.cidrs.iter_mut().zip(cidrs) {
            let mask = u32::MAX
                .checked_shl(32 - u32::from((*prefix).min(32)))
                .unwrap_or(0);
            let mask = Ipv4Addr::from(mask);
            slot.mask = ip_be(mask);
            slot.addr = ip_be(*net) & slot.mask;
        }
        Some(c)
    }
}

/// Key of `client_affinity`: `struct client_key { u32 client; u32 service_id; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client address, network byte order.
    pub client: u32,
    /// The service's id.
    pub service_id: u32,
}

impl ClientKey {
    /// The key for `client` in service `service_id`.
    pub fn new(client: Ipv4Addr, service_id: u32) -> Self {
        Self {
            client: ip_be(client),
            service_id,
        }
    }
}

/// Value of `client_affinity`: `struct client_value { u32 slot, ip; u16 port, pad; u32 pad2;
/// u64 last_seen_ns; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientValue {
    /// Slot the client's last new flow went to.
    pub slot: u32,
    /// That backend's address, network byte order.
    pub ip: u32,
    /// That backend's port, network byte order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
    /// Zero.
    pub pad2: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the client's last new flow.
    pub last_seen_ns: u64,
}

impl ClientValue {
    /// The backend as `(ip, host-order port)`.
    pub fn backend(&self) -> (Ipv4Addr, u16) {
        (ip_from_be(self.ip), u16::from_be(self.port))
    }
}

// SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers (any bit pattern is
// valid) and have no implicit padding: every gap is an explicit `pad` field, checked by the
// size asserts below against the sum of the field widths.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: see above.
unsafe impl aya::Pod for SvcValue {}
// SAFETY: see above.
unsafe impl aya::Pod for BackendKey {}
// SAFETY: see above.
unsafe impl aya::Pod for BackendValue {}
// SAFETY: see above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: see above.
unsafe impl aya::Pod for CtValue {}
// SAFETY: see above.
unsafe impl aya::Pod for AffinityValue {}
// SAFETY: see above.
unsafe impl aya::Pod for ClientKey {}
// SAFETY: see above.
unsafe impl aya::Pod for ClientValue {}
// SAFETY: see above.
unsafe impl aya::Pod for SnatValue {}
// SAFETY: see above.
unsafe impl aya::Pod for Cidr {}
// SAFETY: see above.
unsafe impl aya::Pod for Config {}

const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<SvcKey>() == 8 && align_of::<SvcKey>() == 4);
    assert!(size_of::<SvcValue>() == 12 && align_of::<SvcValue>() == 4);
    assert!(size_of::<BackendKey>() == 8);
    assert!(size_of::<BackendValue>() == 8);
    assert!(size_of::<CtKey>() == 16 && align_of::<CtKey>() == 4);
    assert!(size_of::<CtValue>() == 8);
    assert!(size_of::<AffinityValue>() == 16);
    assert!(size_of::<ClientKey>() == 8);
    assert!(size_of::<ClientValue>() == 24 && align_of::<ClientValue>() == 8);
    assert!(size_of::<SnatValue>() == 12);
    assert!(size_of::<Config>() == 8 + 8 * MAX_CLUSTER_CIDRS);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_wire_order() {
        let k = SvcKey::new(Ipv4Addr::new(10, 96, 0, 1), 80, Proto::Tcp);
        // SAFETY (test only): reading the Pod struct's bytes; it has no padding.
        let bytes: [u8; 8] = unsafe { std::mem::transmute(k) };
        assert_eq!(bytes, [10, 96, 0, 1, 0, 80, 6, 0]);
        assert_eq!(k.vip(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(k.port(), 80);
        let off = k.off_cluster();
        assert_eq!(
            (off.scope, off.vip, off.port),
            (scope::OFF_CLUSTER, k.vip, k.port)
        );
        let b = BackendValue::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
        assert_eq!((b.ip(), b.port()), (Ipv4Addr::new(10, 0, 2, 2), 8080));
    }

    #[test]
    fn config_masks_cidrs_in_wire_order() {
        let c = Config::new(
            Some(Ipv4Addr::new(10, 244, 1, 1)),
            &[
                (Ipv4Addr::new(10, 244, 7, 9), 16),
                (Ipv4Addr::new(0, 0, 0, 0), 0),
            ],
        )
        .unwrap();
        assert_eq!(c.snat_ip.to_ne_bytes(), [10, 244, 1, 1]);
        assert_eq!(c.n_cidrs, 2);
        assert_eq!(c.cidrs[0].addr.to_ne_bytes(), [10, 244, 0, 0]);
        assert_eq!(c.cidrs[0].mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(c.cidrs[1], Cidr::default());
        assert!(Config::new(None, &[(Ipv4Addr::UNSPECIFIED, 8); 5]).is_none());
    }
}
