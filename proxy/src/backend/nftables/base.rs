//! The fixed part of the ruleset: table, chains, set declarations and rules. It depends only
//! on the node's config and the distinct affinity timeouts in use, never on which Services
//! exist, so Service changes never touch it.

use super::capacity::Capacities;
use super::expr::{encode_all, Expr};
use super::netlink::{msg, Attrs, Batch, F_APPEND, F_CREATE};
use super::render::Context;
use super::rules::rules;
use std::collections::BTreeSet;

/// Our table's name, in family `ip` and `ip6`.
pub const TABLE: &str = "netlet";

/// The masquerade mark bit, as the iptables backend and kube-proxy use it.
pub const MASQ_MARK: u32 = 0x4000;

/// Set and map names.
pub mod set {
    /// `addr . proto . port . modulus . slot : endpoint addr . port`: cluster IPs, and
    /// external and load-balancer IPs (their policy's endpoints).
    pub const SERVICE_ENDPOINTS: &str = "service-endpoints";
    /// `proto . port . modulus . slot : endpoint addr . port`: node ports.
    pub const NODEPORT_ENDPOINTS: &str = "nodeport-endpoints";
    /// Like `service-endpoints`, the cluster-wide endpoints of policy Local external IPs, for
    /// pods and the node itself.
    pub const LOCAL_POLICY_CLUSTER_ENDPOINTS: &str = "local-policy-cluster-endpoints";
    /// Like `nodeport-endpoints`, for policy Local node ports reached by pods or the node.
    pub const LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS: &str =
        "local-policy-cluster-nodeport-endpoints";
    /// `addr . proto . port`: cluster IPs with endpoints.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// `addr . proto . port`: external and load-balancer IPs with policy Cluster.
    pub const EXTERNAL_IPS: &str = "external-ips";
    /// `addr . proto . port`: external and load-balancer IPs with policy Local.
    pub const EXTERNAL_IPS_LOCAL: &str = "external-ips-local";
    /// `proto . port`: node ports with policy Cluster.
    pub const NODE_PORTS: &str = "node-ports";
    /// `proto . port`: node ports with policy Local.
    pub const NODE_PORTS_LOCAL: &str = "node-ports-local";
    /// `addr . proto . port . timeout`: frontends with ClientIP affinity, timeout in seconds.
    pub const AFFINITY_IPS: &str = "affinity-ips";
    /// `proto . port . timeout`: node ports with ClientIP affinity.
    pub const AFFINITY_NODEPORTS: &str = "affinity-nodeports";
    /// `client . addr . proto . port : endpoint addr . port`: remembered choices (dynamic).
    pub const AFFINITY: &str = "affinity";
    /// `addr . proto . port`: frontends without endpoints (rejected).
    pub const NO_ENDPOINTS: &str = "no-endpoints";
    /// `proto . port`: node ports without endpoints (rejected).
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// `addr . proto . port`: frontends whose policy Local finds no endpoint here (dropped).
    pub const NO_LOCAL_ENDPOINTS: &str = "no-local-endpoints";
    /// `proto . port`: node ports whose policy Local finds no endpoint here (dropped).
    pub const NO_LOCAL_ENDPOINT_NODEPORTS: &str = "no-local-endpoint-nodeports";
    /// `addr . addr`: an endpoint reaching itself (masqueraded).
    pub const HAIRPIN: &str = "hairpin";
    /// `addr`: the node IPs node ports answer on (empty: any local address).
    pub const NODE_IPS: &str = "node-ips";
}

/// The sets whose elements render produces (everything but the dynamic affinity map).
pub const ELEMENT_SETS: [&str; 17] = [
    set::SERVICE_ENDPOINTS,
    set::NODEPORT_ENDPOINTS,
    set::LOCAL_POLICY_CLUSTER_ENDPOINTS,
    set::LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS,
    set::CLUSTER_IPS,
    set::EXTERNAL_IPS,
    set::EXTERNAL_IPS_LOCAL,
    set::NODE_PORTS,
    set::NODE_PORTS_LOCAL,
    set::AFFINITY_IPS,
    set::AFFINITY_NODEPORTS,
    set::NO_ENDPOINTS,
    set::NO_ENDPOINT_NODEPORTS,
    set::NO_LOCAL_ENDPOINTS,
    set::NO_LOCAL_ENDPOINT_NODEPORTS,
    set::HAIRPIN,
    set::NODE_IPS,
];

/// The element sets without the big endpoint maps: what a rebuild reads back to report stale
/// elements.
pub const FRONTEND_SETS: [&str; 13] = [
    set::CLUSTER_IPS,
    set::EXTERNAL_IPS,
    set::EXTERNAL_IPS_LOCAL,
    set::NODE_PORTS,
    set::NODE_PORTS_LOCAL,
    set::AFFINITY_IPS,
    set::AFFINITY_NODEPORTS,
    set::NO_ENDPOINTS,
    set::NO_ENDPOINT_NODEPORTS,
    set::NO_LOCAL_ENDPOINTS,
    set::NO_LOCAL_ENDPOINT_NODEPORTS,
    set::HAIRPIN,
    set::NODE_IPS,
];

/// The address family a table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `ip`.
    V4,
    /// `ip6`.
    V6,
}

impl Family {
    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
    pub fn nfproto(self) -> u8 {
        match self {
            Self::V4 => 2,
            Self::V6 => 10,
        }
    }

    /// Address length in bytes.
    pub fn addr_len(self) -> u32 {
        match self {
            Self::V4 => 4,
            Self::V6 => 16,
        }
    }

    pub(super) fn addr_regs(self) -> u32 {
        self.addr_len() / 4
    }

    pub(super) fn saddr_offset(self) -> u32 {
        match self {
            Self::V4 => 12,
            Self::V6 => 8,
        }
    }

    pub(super) fn daddr_offset(self) -> u32 {
        match self {
            Self::V4 => 16,
            Self::V6 => 24,
        }
    }

    /// nft's datatype id of an address (`TYPE_IPADDR` / `TYPE_IP6ADDR`).
    fn addr_type(self) -> u32 {
        match self {
            Self::V4 => 7,
            Self::V6 => 8,
        }
    }

    pub(super) fn port_unreachable(self) -> u8 {
        match self {
            Self::V4 => 3,
            Self::V6 => 4,
        }
    }
}

/// A component of a set's key or value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr,
    Proto,
    Port,
    Mark,
}

impl Kind {
    fn type_id(self, f: Family) -> u32 {
        match self {
            Self::Addr => f.addr_type(),
            Self::Proto => 12, // TYPE_INET_PROTOCOL
            Self::Port => 13,  // TYPE_INET_SERVICE
            Self::Mark => 19,  // TYPE_MARK
        }
    }

    fn len(self, f: Family) -> u32 {
        match self {
            Self::Addr => f.addr_len(),
            _ => 4,
        }
    }
}

/// nft's id of a concatenated type: the components' ids, 6 bits each.
fn concat_type(kinds: &[Kind], f: Family) -> u32 {
    kinds.iter().fold(0, |acc, k| (acc << 6) | k.type_id(f))
}

fn concat_len(kinds: &[Kind], f: Family) -> u32 {
    kinds.iter().map(|k| k.len(f)).sum()
}

struct SetDef {
    name: &'static str,
    key: &'static [Kind],
    data: &'static [Kind],
    dynamic: bool,
}

use Kind::*;
const FRONTEND: &[Kind] = &[Addr, Proto, Port];
const NODEPORT: &[Kind] = &[Proto, Port];
const ENDPOINT: &[Kind] = &[Addr, Port];
/// A frontend, its endpoint group's modulus and a slot (the modulus and slot as plain 32-bit
/// numbers, which nft shows as marks).
const SLOTTED_FRONTEND: &[Kind] = &[Addr, Proto, Port, Mark, Mark];
const SLOTTED_NODEPORT: &[Kind] = &[Proto, Port, Mark, Mark];

const fn def(name: &'static str, key: &'static [Kind], data: &'static [Kind]) -> SetDef {
    SetDef {
        name,
        key,
        data,
        dynamic: false,
    }
}

const SETS: [SetDef; 18] = [
    def(set::SERVICE_ENDPOINTS, SLOTTED_FRONTEND, ENDPOINT),
    def(set::NODEPORT_ENDPOINTS, SLOTTED_NODEPORT, ENDPOINT),
    def(
        set::LOCAL_POLICY_CLUSTER_ENDPOINTS,
        SLOTTED_FRONTEND,
        ENDPOINT,
    ),
    def(
        set::LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS,
        SLOTTED_NODEPORT,
        ENDPOINT,
    ),
    def(set::CLUSTER_IPS, FRONTEND, &[]),
    def(set::EXTERNAL_IPS, FRONTEND, &[]),
    def(set::EXTERNAL_IPS_LOCAL, FRONTEND, &[]),
    def(set::NODE_PORTS, NODEPORT, &[]),
    def(set::NODE_PORTS_LOCAL, NODEPORT, &[]),
    def(set::AFFINITY_IPS, &[Addr, Proto, Port, Mark], &[]),
    def(set::AFFINITY_NODEPORTS, &[Proto, Port, Mark], &[]),
    SetDef {
        name: set::AFFINITY,
        key: &[Addr, Addr, Proto, Port],
        data: ENDPOINT,
        dynamic: true,
    },
    def(set::NO_ENDPOINTS, FRONTEND, &[]),
    def(set::NO_ENDPOINT_NODEPORTS, NODEPORT, &[]),
    def(set::NO_LOCAL_ENDPOINTS, FRONTEND, &[]),
    def(set::NO_LOCAL_ENDPOINT_NODEPORTS, NODEPORT, &[]),
    def(set::HAIRPIN, &[Addr, Addr], &[]),
    def(set::NODE_IPS, &[Addr], &[]),
];

/// Chain names.
pub(super) mod chain {
    pub(in super::super) const PREROUTING: &str = "nat-prerouting";
    pub(in super::super) const OUTPUT: &str = "nat-output";
    pub(in super::super) const POSTROUTING: &str = "nat-postrouting";
    pub(in super::super) const SERVICES: &str = "services";
    pub(in super::super) const MARK_OFF_CLUSTER: &str = "mark-off-cluster";
    pub(in super::super) const FILTER_INPUT: &str = "filter-input";
    pub(in super::super) const FILTER_FORWARD: &str = "filter-forward";
    pub(in super::super) const FILTER_OUTPUT: &str = "filter-output";
    pub(in super::super) const FILTER_SERVICES: &str = "filter-services";
    pub(in super::super) const REJECT: &str = "reject";
}

/// `(name, hook, priority, type)` of the base chains.
pub(super) const BASE_CHAINS: [(&str, u32, i32, &str); 6] = [
    (chain::PREROUTING, 0, -100, "nat"),
    (chain::OUTPUT, 3, -100, "nat"),
    (chain::POSTROUTING, 4, 100, "nat"),
    (chain::FILTER_INPUT, 1, -1, "filter"),
    (chain::FILTER_FORWARD, 2, -1, "filter"),
    (chain::FILTER_OUTPUT, 3, -1, "filter"),
];

pub(super) const REGULAR_CHAINS: [&str; 4] = [
    chain::SERVICES,
    chain::MARK_OFF_CLUSTER,
    chain::FILTER_SERVICES,
    chain::REJECT,
];

/// What the fixed part is built from; a different spec means rebuilding the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSpec {
    /// Node facts.
    pub ctx: Context,
    /// Distinct affinity timeouts in use, in seconds.
    pub timeouts: BTreeSet<u32>,
}

/// A rule: its chain, a comment and its expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain.
    pub chain: &'static str,
    /// Shown by `nft list` (libnftnl's rule comment user data).
    pub comment: String,
    /// The expressions.
    pub exprs: Vec<Expr>,
}

fn table_attrs() -> Attrs {
    let mut a = Attrs::new();
    a.str(1, TABLE);
    a
}

/// Adds "delete our table if present" to a batch (add, then delete: the add makes sure the
/// delete finds something).
pub fn delete_table(b: &mut Batch, f: Family) {
    let a = table_attrs();
    b.push(
        msg::NEWTABLE,
        F_CREATE,
        f.nfproto(),
        &a,
        format!("adding table {f:?} {TABLE}"),
    );
    b.push(
        msg::DELTABLE,
        0,
        f.nfproto(),
        &a,
        format!("deleting table {f:?} {TABLE}"),
    );
}

/// `NFTNL_UDATA_RULE_COMMENT` user data.
fn rule_comment(c: &str) -> Vec<u8> {
    super::render::comment_udata(c)
}

/// Adds the whole fixed part (table, chains, sets, rules) to a batch, replacing any table of
/// ours already there; the sets get `capacity`. Returns the number of chains and rules written.
pub fn build(b: &mut Batch, spec: &BaseSpec, capacity: &Capacities) -> (usize, usize) {
    let f = spec.ctx.family;
    let fam = f.nfproto();
    delete_table(b, f);
    b.push(
        msg::NEWTABLE,
        F_CREATE,
        fam,
        &table_attrs(),
        format!("creating table {TABLE}"),
    );
    for (name, hook, prio, ty) in BASE_CHAINS {
        let mut a = Attrs::new();
        a.str(1, TABLE).str(3, name);
        a.nest(4, |h| {
            h.u32(1, hook).put(2, &prio.to_be_bytes());
        });
        a.str(7, ty).u32(5, 1); // policy accept
        b.push(
            msg::NEWCHAIN,
            F_CREATE,
            fam,
            &a,
            format!("creating chain {name}"),
        );
    }
    for name in REGULAR_CHAINS {
        let mut a = Attrs::new();
        a.str(1, TABLE).str(3, name);
        b.push(
            msg::NEWCHAIN,
            F_CREATE,
            fam,
            &a,
            format!("creating chain {name}"),
        );
    }
    for (id, s) in (1u32..).zip(SETS.iter()) {
        let mut flags = 0;
        if !s.data.is_empty() {
            flags |= 0x8; // NFT_SET_MAP
        }
        if s.dynamic {
            flags |= 0x10 | 0x20; // NFT_SET_TIMEOUT | NFT_SET_EVAL
        }
        let mut a = Attrs::new();
        a.str(1, TABLE)
            .str(2, s.name)
            .u32(3, flags)
            .u32(4, concat_type(s.key, f))
            .u32(5, concat_len(s.key, f));
        if !s.data.is_empty() {
            a.u32(6, concat_type(s.data, f))
                .u32(7, concat_len(s.data, f));
        }
        a.u32(10, id);
        // NFTA_SET_DESC_SIZE: the limit, and what the kernel sizes the hash table for.
        let size = if s.dynamic {
            65_535
        } else {
            capacity.of(s.name)
        };
        a.nest(9, |d| {
            d.u32(1, size);
        });
        // NFTNL_UDATA_SET_KEYBYTEORDER: big endian (2) when the key starts with an address,
        // host (1) for our ids; nft only uses it to print.
        let order: u32 = if s.key[0] == Mark { 1 } else { 2 };
        let mut ud = vec![0u8, 4];
        ud.extend_from_slice(&order.to_ne_bytes());
        a.put(13, &ud);
        b.push(
            msg::NEWSET,
            F_CREATE,
            fam,
            &a,
            format!("creating set {}", s.name),
        );
    }
    let rules = rules(spec);
    for rule in &rules {
        let mut a = Attrs::new();
        a.str(1, TABLE).str(2, rule.chain);
        let exprs = encode_all(&rule.exprs);
        a.nest(4, |e| {
            e.extend(&exprs);
        });
        a.put(7, &rule_comment(&rule.comment));
        let what = format!("adding rule {:?} to chain {}", rule.comment, rule.chain);
        b.push(msg::NEWRULE, F_CREATE | F_APPEND, fam, &a, what);
    }
    (
        BASE_CHAINS.len() + REGULAR_CHAINS.len() + SETS.len(),
        rules.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_types_are_nfts_ids() {
        // `ipv4_addr . inet_proto . inet_service`, as nft computes it: 6 bits per type.
        assert_eq!(
            concat_type(FRONTEND, Family::V4),
            (7 << 12) | (12 << 6) | 13
        );
        assert_eq!(concat_len(FRONTEND, Family::V6), 24);
    }
}
