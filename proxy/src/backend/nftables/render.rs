//! Pure rendering: a family's service table in, the elements of the fixed maps and sets out.
//! Nothing here talks to the kernel; the golden tests pin the output.
//!
//! Which maps a frontend (address and port, or node port) lands in decides how it is treated
//! (see the module doc of [`super`]).

use super::base::{set, Family};
use crate::model::{Endpoint, Protocol, ServicePort, ServiceTable};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Endpoint groups of up to this many endpoints get exactly one slot per endpoint:
/// `numgen random mod n` picks one, so traffic splits evenly and a service with 5 endpoints
/// costs 5 map elements (this is what makes 10,000 services load in a fraction of a second).
pub const EXACT_MAX: u32 = 16;

/// Larger groups share `SLOTS` slots round-robin: each endpoint gets `SLOTS/n` slots, the
/// first `SLOTS % n` one more (at most 1/64 of the traffic off); groups with more than `SLOTS`
/// endpoints use only their first `SLOTS`.
pub const SLOTS: u32 = 64;

/// The modulus (and number of slots) of a group of `n` endpoints. The modulus is part of each
/// endpoint map key, and the rules try each modulus in [`moduli`] in turn, so only the rule
/// with the group's own modulus finds its elements.
pub fn modulus(n: usize) -> u32 {
    u32::try_from(n).map_or(SLOTS, |n| if n <= EXACT_MAX { n } else { SLOTS })
}

/// Every modulus a group can have, smallest first.
pub fn moduli() -> impl Iterator<Item = u32> {
    (1..=EXACT_MAX).chain(std::iter::once(SLOTS))
}

/// One component of a concatenated key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// An address (`ipv4_addr` / `ipv6_addr`).
    Addr(IpAddr),
    /// `inet_proto`.
    Proto(Protocol),
    /// `inet_service` (a port).
    Port(u16),
    /// A 32-bit number (modulus, slot, timeout), host byte order as registers hold it.
    Id(u32),
}

impl Field {
    /// The bytes as the kernel holds them in a concatenation (each field padded to 4).
    pub fn push_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Self::Addr(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Self::Addr(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            Self::Proto(p) => out.extend_from_slice(&[proto_number(*p), 0, 0, 0]),
            Self::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Self::Id(v) => out.extend_from_slice(&v.to_ne_bytes()),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Proto(p) => write!(f, "{p}"),
            Self::Port(p) => write!(f, "{p}"),
            Self::Id(v) => write!(f, "{v:#x}"),
        }
    }
}

/// The IP protocol number.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The bytes of a concatenation.
pub fn concat_bytes(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        f.push_bytes(&mut out);
    }
    out
}

/// One element of one of our sets or maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The set's name.
    pub set: &'static str,
    /// The key's fields.
    pub key: Vec<Field>,
    /// The value's fields (maps only).
    pub data: Vec<Field>,
    /// Shown by `nft list` (the service port), if any.
    pub comment: Option<String>,
}

impl Element {
    fn new(set: &'static str, key: Vec<Field>, data: Vec<Field>, comment: &str) -> Self {
        Self {
            set,
            key,
            data,
            comment: Some(comment.to_string()),
        }
    }

    /// The element as the kernel stores it: key bytes, value bytes and user data (comment).
    pub fn encoded(&self) -> Encoded {
        Encoded {
            data: concat_bytes(&self.data),
            userdata: self
                .comment
                .as_deref()
                .map(comment_udata)
                .unwrap_or_default(),
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[Field]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" . ")
        };
        write!(f, "{}", join(&self.key))?;
        if !self.data.is_empty() {
            write!(f, " : {}", join(&self.data))?;
        }
        if let Some(c) = &self.comment {
            write!(f, " # {c}")?;
        }
        Ok(())
    }
}

/// What the kernel holds for one key: what diffing compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Value bytes (empty for sets).
    pub data: Vec<u8>,
    /// `NFTA_SET_ELEM_USERDATA` bytes (empty without comment).
    pub userdata: Vec<u8>,
}

/// libnftnl's element user data for a comment: `NFTNL_UDATA_SET_ELEM_COMMENT`, length, text
/// with its NUL. nft shows at most 128 bytes, so longer names are cut.
pub fn comment_udata(c: &str) -> Vec<u8> {
    let mut end = c.len().min(127);
    while !c.is_char_boundary(end) {
        end -= 1;
    }
    let text = &c.as_bytes()[..end];
    let mut v = vec![0, u8::try_from(text.len() + 1).expect("cut to 127")];
    v.extend_from_slice(text);
    v.push(0);
    v
}

/// The node facts rendering depends on, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The family.
    pub family: Family,
    /// Cluster CIDRs of that family.
    pub cluster_cidrs: Vec<ipnetwork::IpNetwork>,
    /// Node IPs node ports answer on (empty: every local address).
    pub node_ips: Vec<IpAddr>,
    /// Masquerade all service traffic.
    pub masquerade_all: bool,
}

/// All desired elements, keyed by set and key bytes (the kernel's identity of an element).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The elements.
    pub elements: BTreeMap<(&'static str, Vec<u8>), Element>,
}

impl Desired {
    /// The distinct session affinity timeouts in use (each has its own rules).
    pub fn timeouts(&self) -> BTreeSet<u32> {
        self.elements
            .values()
            .filter(|e| e.set == set::AFFINITY_IPS || e.set == set::AFFINITY_NODEPORTS)
            .filter_map(|e| match e.key.last() {
                Some(Field::Id(t)) => Some(*t),
                _ => None,
            })
            .collect()
    }

    fn add(&mut self, e: Element) {
        self.elements.insert((e.set, concat_bytes(&e.key)), e);
    }
}

impl fmt::Display for Desired {
    /// One block per set, elements in key byte order; the golden format. Endpoint maps show
    /// one line per frontend (with its modulus) and endpoint with its number of slots.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut current = "";
        let mut slots: Vec<(String, &str, usize)> = Vec::new();
        let flush = |f: &mut fmt::Formatter<'_>, slots: &mut Vec<(String, &str, usize)>| {
            for (line, comment, n) in slots.drain(..) {
                writeln!(f, "  {line} x{n} # {comment}")?;
            }
            Ok(())
        };
        for ((set, _), e) in &self.elements {
            if *set != current {
                flush(f, &mut slots)?;
                writeln!(f, "{set}")?;
                current = set;
            }
            if !ENDPOINT_MAPS.contains(set) {
                writeln!(f, "  {e}")?;
                continue;
            }
            let frontend = Element {
                key: e.key[..e.key.len() - 1].to_vec(),
                comment: None,
                ..e.clone()
            };
            let line = frontend.to_string();
            let comment = e.comment.as_deref().unwrap_or("");
            match slots
                .iter_mut()
                .find(|(l, c, _)| *l == line && *c == comment)
            {
                Some((_, _, n)) => *n += 1,
                None => slots.push((line, comment, 1)),
            }
        }
        flush(f, &mut slots)
    }
}

/// The maps keyed by `frontend . modulus . slot`.
const ENDPOINT_MAPS: [&str; 4] = [
    set::SERVICE_ENDPOINTS,
    set::NODEPORT_ENDPOINTS,
    set::LOCAL_POLICY_CLUSTER_ENDPOINTS,
    set::LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS,
];

/// The elements `prefix . modulus . slot → endpoint` of the endpoints `eps`, one per slot
/// (see [`modulus`]), round-robin.
fn slot_elements(
    out: &mut Vec<Element>,
    set: &'static str,
    prefix: &[Field],
    eps: &[&Endpoint],
    comment: &str,
) {
    if eps.is_empty() {
        return;
    }
    let m = modulus(eps.len());
    for slot in 0..m {
        let e = eps[slot as usize % eps.len()];
        let mut key = prefix.to_vec();
        key.push(Field::Id(m));
        key.push(Field::Id(slot));
        out.push(Element::new(
            set,
            key,
            vec![Field::Addr(e.ip), Field::Port(e.port)],
            comment,
        ));
    }
}

/// The elements of one service port (already restricted to the family).
pub fn render_port(p: &ServicePort) -> Vec<Element> {
    let spn = p.name.to_string();
    let proto = Field::Proto(p.name.protocol);
    let cluster = p.cluster_endpoints();
    let local = p.local_endpoints();
    let reachable = p.reachable_endpoints();
    let has_endpoints = !reachable.is_empty();
    let mut out = Vec::new();
    let frontend = |out: &mut Vec<Element>, set, key: Vec<Field>| {
        out.push(Element::new(set, key, vec![], &spn));
    };
    let affine = |out: &mut Vec<Element>, set, key: &[Field]| {
        if let Some(t) = p.affinity_timeout {
            let mut key = key.to_vec();
            key.push(Field::Id(t));
            out.push(Element::new(set, key, vec![], &spn));
        }
    };
    // An unserved frontend: rejected without any endpoint, dropped when only policy Local
    // finds none here.
    let (unserved_ips, unserved_ports) = if has_endpoints {
        (set::NO_LOCAL_ENDPOINTS, set::NO_LOCAL_ENDPOINT_NODEPORTS)
    } else {
        (set::NO_ENDPOINTS, set::NO_ENDPOINT_NODEPORTS)
    };
    let internal = if p.internal_policy_local() {
        &local
    } else {
        &cluster
    };
    for ip in &p.cluster_ips {
        let key = vec![Field::Addr(*ip), proto, Field::Port(p.port)];
        if internal.is_empty() {
            frontend(&mut out, unserved_ips, key);
            continue;
        }
        slot_elements(&mut out, set::SERVICE_ENDPOINTS, &key, internal, &spn);
        affine(&mut out, set::AFFINITY_IPS, &key);
        frontend(&mut out, set::CLUSTER_IPS, key);
    }
    if p.externally_accessible() {
        let dests: Vec<Vec<Field>> = (p.external_ips.iter())
            .chain(&p.load_balancer_ips)
            .map(|ip| vec![Field::Addr(*ip), proto, Field::Port(p.port)])
            .collect();
        let node_port = p.node_port.map(|np| vec![proto, Field::Port(np)]);
        let policy_local = p.external_policy_local();
        if has_endpoints {
            for key in &dests {
                affine(&mut out, set::AFFINITY_IPS, key);
                if policy_local {
                    slot_elements(&mut out, set::SERVICE_ENDPOINTS, key, &local, &spn);
                    let other = set::LOCAL_POLICY_CLUSTER_ENDPOINTS;
                    slot_elements(&mut out, other, key, &cluster, &spn);
                    frontend(&mut out, set::EXTERNAL_IPS_LOCAL, key.clone());
                } else {
                    slot_elements(&mut out, set::SERVICE_ENDPOINTS, key, &cluster, &spn);
                    frontend(&mut out, set::EXTERNAL_IPS, key.clone());
                }
            }
            if let Some(key) = &node_port {
                affine(&mut out, set::AFFINITY_NODEPORTS, key);
                if policy_local {
                    slot_elements(&mut out, set::NODEPORT_ENDPOINTS, key, &local, &spn);
                    let other = set::LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS;
                    slot_elements(&mut out, other, key, &cluster, &spn);
                    frontend(&mut out, set::NODE_PORTS_LOCAL, key.clone());
                } else {
                    slot_elements(&mut out, set::NODEPORT_ENDPOINTS, key, &cluster, &spn);
                    frontend(&mut out, set::NODE_PORTS, key.clone());
                }
            }
        }
        let served = if policy_local {
            !local.is_empty()
        } else {
            has_endpoints
        };
        if !served {
            for key in dests {
                frontend(&mut out, unserved_ips, key);
            }
            if let Some(key) = node_port {
                frontend(&mut out, unserved_ports, key);
            }
        }
    }
    for e in &reachable {
        out.push(Element {
            set: set::HAIRPIN,
            key: vec![Field::Addr(e.ip), Field::Addr(e.ip)],
            data: vec![],
            comment: None,
        });
    }
    out
}

/// The node's own elements (its node-port addresses).
pub fn node_elements(ctx: &Context) -> Vec<Element> {
    (ctx.node_ips.iter())
        .map(|ip| Element {
            set: set::NODE_IPS,
            key: vec![Field::Addr(*ip)],
            data: vec![],
            comment: None,
        })
        .collect()
}

/// Joins the node's own elements and the ports' fragments into the desired state.
pub fn assemble<'a>(ctx: &Context, fragments: impl Iterator<Item = &'a Vec<Element>>) -> Desired {
    let mut d = Desired::default();
    for e in node_elements(ctx) {
        d.add(e);
    }
    for f in fragments {
        for e in f {
            d.add(e.clone());
        }
    }
    d
}

/// The desired state a sync of `table` (already restricted to the family) installs.
pub fn render(table: &ServiceTable, ctx: &Context) -> Desired {
    let fragments: Vec<Vec<Element>> = table.ports().map(render_port).collect();
    assemble(ctx, fragments.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::{ServiceKey, ServicePortName, TrafficPolicy};

    fn port(eps: &[&str]) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                service: ServiceKey::new("ns", "web"),
                port: String::new(),
                protocol: Protocol::Tcp,
            },
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            port: 80,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_timeout: None,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
            endpoints: eps
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 8080,
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: None,
                    zone: None,
                    local: false,
                })
                .collect(),
        }
    }

    /// Endpoints per slot of the service port with `n` endpoints, and the keys' modulus.
    fn slot_counts(n: usize) -> (Vec<usize>, BTreeSet<Field>) {
        let ips: Vec<String> = (1..=n)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let elems = render_port(&port(&ips));
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let mut moduli = BTreeSet::new();
        for e in elems.iter().filter(|e| e.set == set::SERVICE_ENDPOINTS) {
            *count.entry(e.data[0].to_string()).or_default() += 1;
            moduli.insert(e.key[e.key.len() - 2]);
        }
        (count.into_values().collect(), moduli)
    }

    #[test]
    fn small_groups_get_a_slot_per_endpoint() {
        assert_eq!(slot_counts(3), (vec![1, 1, 1], [Field::Id(3)].into()));
        let (counts, moduli) = slot_counts(EXACT_MAX as usize);
        assert!(counts.iter().all(|c| *c == 1) && counts.len() == EXACT_MAX as usize);
        assert_eq!(moduli, [Field::Id(EXACT_MAX)].into());
    }

    #[test]
    fn large_groups_share_slots_round_robin() {
        let (counts, used) = slot_counts(20);
        assert_eq!(used, [Field::Id(SLOTS)].into());
        assert_eq!(counts.iter().sum::<usize>(), SLOTS as usize);
        assert_eq!(counts.iter().filter(|c| **c == 4).count(), 4);
        assert_eq!(counts.iter().filter(|c| **c == 3).count(), 16);
        // More endpoints than slots: only the first SLOTS are used.
        assert_eq!(slot_counts(100).0.len(), SLOTS as usize);
        assert!(moduli().any(|m| m == modulus(100)));
    }

    #[test]
    fn no_endpoints_means_reject_and_nothing_else() {
        let elems = render_port(&port(&[]));
        let sets: Vec<&str> = elems.iter().map(|e| e.set).collect();
        assert_eq!(sets, [set::NO_ENDPOINTS]);
    }

    #[test]
    fn fields_are_padded_to_registers() {
        let key = [
            Field::Addr("10.96.0.10".parse().unwrap()),
            Field::Proto(Protocol::Udp),
            Field::Port(53),
        ];
        assert_eq!(
            concat_bytes(&key),
            [10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]
        );
        assert_eq!(comment_udata("a/b"), [0, 4, b'a', b'/', b'b', 0]);
        assert_eq!(comment_udata(&"x".repeat(300)).len(), 2 + 128);
    }
}
