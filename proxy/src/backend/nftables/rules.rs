//! The rules of the fixed part, as expressions: matching frontends, choosing endpoints,
//! remembering ClientIP choices, marking for masquerade, rejecting the unserved.

use super::base::{chain, set, BaseSpec, Family, Rule, MASQ_MARK};
use super::expr::*;
use super::render::moduli;
use std::net::IpAddr;

/// Register layout of the service rules: `client . daddr . proto . port . modulus` contiguous,
/// so each concatenated key we look up is a run of registers, then room for an endpoint (whose
/// first register holds the slot while the endpoint is looked up).
struct Regs {
    /// Client address.
    s: u32,
    /// Destination address.
    d: u32,
    /// `l4proto`, then the destination port.
    p: u32,
    /// Modulus, or timeout.
    x: u32,
    /// The endpoint (address, then port); scratch for conditions.
    e: u32,
}

impl Regs {
    fn new(f: Family) -> Self {
        let a = f.addr_regs();
        let s = REG32_00;
        let p = s + 2 * a;
        Self {
            s,
            d: s + a,
            p,
            x: p + 2,
            e: p + 3,
        }
    }
}

fn ne(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Builds the rules of one family.
struct Builder<'a> {
    f: Family,
    spec: &'a BaseSpec,
    r: Regs,
}

/// How a frontend is matched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frontend {
    /// `daddr . l4proto . dport`.
    Address,
    /// A node address, then `l4proto . dport`.
    NodePort,
}

impl Builder<'_> {
    fn saddr(&self, dreg: u32) -> Expr {
        Expr::Payload {
            base: NETWORK,
            offset: self.f.saddr_offset(),
            len: self.f.addr_len(),
            dreg,
        }
    }

    fn daddr(&self, dreg: u32) -> Expr {
        Expr::Payload {
            base: NETWORK,
            offset: self.f.daddr_offset(),
            len: self.f.addr_len(),
            dreg,
        }
    }

    /// `meta l4proto . th dport` into `p`, `p + 1`.
    fn proto_port(&self) -> Vec<Expr> {
        let p = self.r.p;
        vec![
            Expr::Meta {
                key: META_L4PROTO,
                dreg: p,
            },
            Expr::Payload {
                base: TRANSPORT,
                offset: 2,
                len: 2,
                dreg: p + 1,
            },
        ]
    }

    /// Matches a node address: one of `node-ips`, or any local address but loopback.
    fn node_address(&self) -> Vec<Expr> {
        let e = self.r.e;
        if !self.spec.ctx.node_ips.is_empty() {
            return vec![
                self.daddr(e),
                Expr::Lookup {
                    set: set::NODE_IPS,
                    sreg: e,
                    dreg: None,
                },
            ];
        }
        let mut v = vec![
            Expr::FibAddrType {
                flags: FIB_DADDR,
                dreg: e,
            },
            Expr::Cmp {
                sreg: e,
                op: CMP_EQ,
                data: ne(RTN_LOCAL),
            },
            self.daddr(e),
        ];
        match self.f {
            Family::V4 => v.extend([
                Expr::Bitwise {
                    sreg: e,
                    dreg: e,
                    mask: vec![255, 0, 0, 0],
                    xor: vec![0; 4],
                },
                Expr::Cmp {
                    sreg: e,
                    op: CMP_NEQ,
                    data: vec![127, 0, 0, 0],
                },
            ]),
            Family::V6 => v.push(Expr::Cmp {
                sreg: e,
                op: CMP_NEQ,
                data: addr_bytes(&IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            }),
        }
        v
    }

    /// Loads a frontend's key; returns the expressions and the key's first register.
    fn key(&self, fe: Frontend) -> (Vec<Expr>, u32) {
        match fe {
            Frontend::Address => {
                let mut v = vec![self.daddr(self.r.d)];
                v.extend(self.proto_port());
                (v, self.r.d)
            }
            Frontend::NodePort => {
                let mut v = self.node_address();
                v.extend(self.proto_port());
                (v, self.r.p)
            }
        }
    }

    /// Matches a frontend in a set.
    fn member(&self, fe: Frontend, set: &'static str) -> Vec<Expr> {
        let (mut v, sreg) = self.key(fe);
        v.push(Expr::Lookup {
            set,
            sreg,
            dreg: None,
        });
        v
    }

    fn mark_masq(&self) -> Vec<Expr> {
        let e = self.r.e;
        vec![
            Expr::Meta {
                key: META_MARK,
                dreg: e,
            },
            Expr::Bitwise {
                sreg: e,
                dreg: e,
                mask: ne(!MASQ_MARK),
                xor: ne(MASQ_MARK),
            },
            Expr::MetaSet {
                key: META_MARK,
                sreg: e,
            },
        ]
    }

    fn source_in(&self, cidr: &ipnetwork::IpNetwork) -> Vec<Expr> {
        let e = self.r.e;
        let mask = addr_bytes(&cidr.mask());
        vec![
            self.saddr(e),
            Expr::Bitwise {
                sreg: e,
                dreg: e,
                mask: mask.clone(),
                xor: vec![0; mask.len()],
            },
            Expr::Cmp {
                sreg: e,
                op: CMP_EQ,
                data: addr_bytes(&cidr.network()),
            },
        ]
    }

    fn source_local(&self) -> Vec<Expr> {
        let e = self.r.e;
        vec![
            Expr::FibAddrType {
                flags: FIB_SADDR,
                dreg: e,
            },
            Expr::Cmp {
                sreg: e,
                op: CMP_EQ,
                data: ne(RTN_LOCAL),
            },
        ]
    }

    /// DNAT to the endpoint in `e`.
    fn dnat(&self) -> Vec<Expr> {
        let e = self.r.e;
        vec![
            Expr::Counter,
            Expr::Dnat {
                family: self.f.nfproto(),
                addr_reg: e,
                port_reg: e + self.f.addr_regs(),
            },
        ]
    }

    /// The rules of one way to endpoints: `cond`, the frontend's key, a modulus and a random
    /// slot below it, one rule per modulus; only the frontend's own modulus finds elements.
    /// The slot goes into the first endpoint register, which the lookup then overwrites.
    fn balance(
        &self,
        what: &str,
        cond: &[Expr],
        fe: Frontend,
        map: &'static str,
        out: &mut Vec<Rule>,
    ) {
        let Regs { x, e, .. } = self.r;
        debug_assert_eq!(e, x + 1, "the slot follows the modulus in the key");
        let (key, start) = self.key(fe);
        for m in moduli() {
            let mut exprs: Vec<Expr> = cond.iter().cloned().chain(key.clone()).collect();
            exprs.extend([
                Expr::Immediate {
                    dreg: x,
                    data: ne(m),
                },
                Expr::NumgenRandom {
                    dreg: e,
                    modulus: m,
                },
                Expr::Lookup {
                    set: map,
                    sreg: start,
                    dreg: Some(e),
                },
            ]);
            exprs.extend(self.dnat());
            out.push(Rule {
                chain: chain::SERVICES,
                comment: format!("{what}: random endpoint of {m}"),
                exprs,
            });
        }
    }

    /// Postrouting rules remembering, per affinity timeout, the endpoint a new connection to
    /// an affine frontend was sent to: `client . frontend` (the original destination, from
    /// conntrack) `: endpoint` (the destination now, after DNAT).
    fn remember_affinity(&self) -> Vec<Rule> {
        let Regs { s, d, p, x, e } = self.r;
        let dst_ip = match self.f {
            Family::V4 => CT_DST_IP,
            Family::V6 => CT_DST_IP6,
        };
        let mut out = Vec::new();
        for t in &self.spec.timeouts {
            for (affine, start, what) in [
                (set::AFFINITY_IPS, d, "service"),
                (set::AFFINITY_NODEPORTS, p, "node port"),
            ] {
                let exprs = vec![
                    Expr::CtOriginal {
                        key: dst_ip,
                        dreg: d,
                    },
                    Expr::Meta {
                        key: META_L4PROTO,
                        dreg: p,
                    },
                    Expr::CtOriginal {
                        key: CT_PROTO_DST,
                        dreg: p + 1,
                    },
                    Expr::Immediate {
                        dreg: x,
                        data: ne(*t),
                    },
                    Expr::Lookup {
                        set: affine,
                        sreg: start,
                        dreg: None,
                    },
                    self.saddr(s),
                    self.daddr(e),
                    Expr::Payload {
                        base: TRANSPORT,
                        offset: 2,
                        len: 2,
                        dreg: e + self.f.addr_regs(),
                    },
                    Expr::Dynset {
                        set: set::AFFINITY,
                        op: DYNSET_UPDATE,
                        sreg_key: s,
                        sreg_data: e,
                        timeout_ms: u64::from(*t) * 1000,
                    },
                ];
                out.push(Rule {
                    chain: chain::POSTROUTING,
                    comment: format!("remember the endpoint of a {what} for {t}s"),
                    exprs,
                });
            }
        }
        out
    }

    fn service_rules(&self) -> Vec<Rule> {
        let ctx = &self.spec.ctx;
        let mut out = Vec::new();
        let r = |comment: &str, exprs: Vec<Expr>| Rule {
            chain: chain::SERVICES,
            comment: comment.to_string(),
            exprs,
        };
        let cat = |parts: &[Vec<Expr>]| parts.concat();
        use Frontend::{Address, NodePort};
        // Masquerade marks; DNAT (a final verdict) comes after.
        let cluster_ips = self.member(Address, set::CLUSTER_IPS);
        if ctx.masquerade_all {
            let what = "masquerade all cluster IP traffic";
            out.push(r(what, cat(&[cluster_ips, self.mark_masq()])));
        } else if !ctx.cluster_cidrs.is_empty() {
            let jump = vec![Expr::Verdict(Verdict::Jump(chain::MARK_OFF_CLUSTER))];
            let what = "masquerade off-cluster sources to cluster IPs";
            out.push(r(what, cat(&[cluster_ips, jump])));
        }
        for (fe, set) in [(Address, set::EXTERNAL_IPS), (NodePort, set::NODE_PORTS)] {
            let what = "masquerade external traffic with policy Cluster";
            out.push(r(what, cat(&[self.member(fe, set), self.mark_masq()])));
        }
        for (fe, set) in [
            (Address, set::EXTERNAL_IPS_LOCAL),
            (NodePort, set::NODE_PORTS_LOCAL),
        ] {
            let what = "masquerade the node's own traffic to policy Local services";
            let v = cat(&[self.source_local(), self.member(fe, set), self.mark_masq()]);
            out.push(r(what, v));
        }
        let Regs { s, d, e, .. } = self.r;
        let mut hit = vec![self.saddr(s), self.daddr(d)];
        hit.extend(self.proto_port());
        hit.push(Expr::Lookup {
            set: set::AFFINITY,
            sreg: s,
            dreg: Some(e),
        });
        hit.extend(self.dnat());
        out.push(r("remembered endpoint (ClientIP affinity)", hit));
        for (fe, map, what) in [
            (Address, set::LOCAL_POLICY_CLUSTER_ENDPOINTS, "external IP"),
            (
                NodePort,
                set::LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS,
                "node port",
            ),
        ] {
            for cidr in &ctx.cluster_cidrs {
                let w = format!("{what}, policy Local, from pods in {cidr}");
                self.balance(&w, &self.source_in(cidr), fe, map, &mut out);
            }
            let w = format!("{what}, policy Local, from the node");
            self.balance(&w, &self.source_local(), fe, map, &mut out);
        }
        self.balance("service", &[], Address, set::SERVICE_ENDPOINTS, &mut out);
        self.balance(
            "node port",
            &[],
            NodePort,
            set::NODEPORT_ENDPOINTS,
            &mut out,
        );
        out
    }

    fn rules(&self) -> Vec<Rule> {
        let s = self.r.s;
        let ctx = &self.spec.ctx;
        let mut out = Vec::new();
        let r = |chain, comment: &str, exprs: Vec<Expr>| Rule {
            chain,
            comment: comment.to_string(),
            exprs,
        };
        let jump = |c| vec![Expr::Verdict(Verdict::Jump(c))];
        out.push(r(chain::PREROUTING, "services", jump(chain::SERVICES)));
        out.push(r(chain::OUTPUT, "services", jump(chain::SERVICES)));
        out.extend(self.service_rules());
        for cidr in &ctx.cluster_cidrs {
            let mut v = self.source_in(cidr);
            v.push(Expr::Verdict(Verdict::Return));
            out.push(r(chain::MARK_OFF_CLUSTER, "pod source", v));
        }
        out.push(r(
            chain::MARK_OFF_CLUSTER,
            "off-cluster source",
            self.mark_masq(),
        ));

        // Postrouting: affinity, then masquerade marked traffic and hairpin (an endpoint
        // reaching itself).
        out.extend(self.remember_affinity());
        let mut v = vec![
            Expr::Meta {
                key: META_MARK,
                dreg: s,
            },
            Expr::Bitwise {
                sreg: s,
                dreg: s + 1,
                mask: ne(MASQ_MARK),
                xor: ne(0),
            },
            Expr::Cmp {
                sreg: s + 1,
                op: CMP_NEQ,
                data: ne(0),
            },
            // Clear the mark so a packet traversing again is not masqueraded twice.
            Expr::Bitwise {
                sreg: s,
                dreg: s,
                mask: ne(!MASQ_MARK),
                xor: ne(0),
            },
            Expr::MetaSet {
                key: META_MARK,
                sreg: s,
            },
            Expr::Counter,
            Expr::MasqueradeFullyRandom,
        ];
        out.push(r(chain::POSTROUTING, "service traffic requiring SNAT", v));
        let a = self.f.addr_regs();
        v = vec![
            Expr::Ct {
                key: CT_STATUS,
                dreg: s,
            },
            Expr::Bitwise {
                sreg: s,
                dreg: s,
                mask: ne(1 << 5), // IPS_DST_NAT
                xor: ne(0),
            },
            Expr::Cmp {
                sreg: s,
                op: CMP_NEQ,
                data: ne(0),
            },
            self.saddr(s),
            self.daddr(s + a),
            Expr::Lookup {
                set: set::HAIRPIN,
                sreg: s,
                dreg: None,
            },
            Expr::Counter,
            Expr::MasqueradeFullyRandom,
        ];
        out.push(r(chain::POSTROUTING, "hairpin", v));

        // Filter: new connections to unserved frontends.
        let new_only = vec![
            Expr::Ct {
                key: CT_STATE,
                dreg: s,
            },
            Expr::Bitwise {
                sreg: s,
                dreg: s,
                mask: ne(1 << 3), // IP_CT_NEW
                xor: ne(0),
            },
            Expr::Cmp {
                sreg: s,
                op: CMP_NEQ,
                data: ne(0),
            },
            Expr::Verdict(Verdict::Jump(chain::FILTER_SERVICES)),
        ];
        for c in [
            chain::FILTER_INPUT,
            chain::FILTER_FORWARD,
            chain::FILTER_OUTPUT,
        ] {
            out.push(r(c, "new connections to services", new_only.clone()));
        }
        let unserved = [
            (
                Frontend::Address,
                set::NO_ENDPOINTS,
                Verdict::Goto(chain::REJECT),
            ),
            (
                Frontend::NodePort,
                set::NO_ENDPOINT_NODEPORTS,
                Verdict::Goto(chain::REJECT),
            ),
            (Frontend::Address, set::NO_LOCAL_ENDPOINTS, Verdict::Drop),
            (
                Frontend::NodePort,
                set::NO_LOCAL_ENDPOINT_NODEPORTS,
                Verdict::Drop,
            ),
        ];
        for (fe, set, verdict) in unserved {
            let mut v = self.member(fe, set);
            v.extend([Expr::Counter, Expr::Verdict(verdict)]);
            let comment = match verdict {
                Verdict::Drop => "no local endpoints",
                _ => "no endpoints",
            };
            out.push(r(chain::FILTER_SERVICES, comment, v));
        }
        let tcp = vec![
            Expr::Meta {
                key: META_L4PROTO,
                dreg: s,
            },
            Expr::Cmp {
                sreg: s,
                op: CMP_EQ,
                data: vec![6],
            },
            Expr::RejectTcpReset,
        ];
        out.push(r(chain::REJECT, "tcp", tcp));
        let code = self.f.port_unreachable();
        out.push(r(chain::REJECT, "other", vec![Expr::RejectIcmp { code }]));
        out
    }
}

/// The rules of the fixed part, in order.
pub fn rules(spec: &BaseSpec) -> Vec<Rule> {
    let f = spec.ctx.family;
    Builder {
        f,
        spec,
        r: Regs::new(f),
    }
    .rules()
}

#[cfg(test)]
mod tests {
    use super::super::base::{BASE_CHAINS, REGULAR_CHAINS};
    use super::super::render::Context;
    use super::*;
    use std::collections::BTreeSet;

    fn spec(family: Family, node_ips: Vec<IpAddr>) -> BaseSpec {
        let cidr = match family {
            Family::V4 => "10.244.0.0/16",
            Family::V6 => "fd00:10:244::/56",
        };
        BaseSpec {
            ctx: Context {
                family,
                cluster_cidrs: vec![cidr.parse().unwrap()],
                node_ips,
                masquerade_all: false,
            },
            timeouts: [60, 10_800].into(),
        }
    }

    fn regs(e: &Expr) -> Vec<u32> {
        match e {
            Expr::Payload { dreg, .. }
            | Expr::Meta { dreg, .. }
            | Expr::Ct { dreg, .. }
            | Expr::CtOriginal { dreg, .. }
            | Expr::NumgenRandom { dreg, .. }
            | Expr::Immediate { dreg, .. }
            | Expr::FibAddrType { dreg, .. } => vec![*dreg],
            Expr::MetaSet { sreg, .. } | Expr::Cmp { sreg, .. } => vec![*sreg],
            Expr::Bitwise { sreg, dreg, .. } => vec![*sreg, *dreg],
            Expr::Lookup { sreg, dreg, .. } => [Some(*sreg), *dreg].into_iter().flatten().collect(),
            Expr::Dynset {
                sreg_key,
                sreg_data,
                ..
            } => vec![*sreg_key, *sreg_data],
            Expr::Dnat {
                addr_reg, port_reg, ..
            } => vec![*addr_reg, *port_reg],
            _ => vec![],
        }
    }

    #[test]
    fn rules_use_only_32_bit_registers_that_exist() {
        for family in [Family::V4, Family::V6] {
            for node_ips in [vec![], vec!["192.168.1.1".parse().unwrap()]] {
                let rules = rules(&spec(family, node_ips));
                for r in &rules {
                    for e in &r.exprs {
                        for reg in regs(e) {
                            // An IPv6 endpoint in `e` spans 4 registers plus its port.
                            assert!((8..=23).contains(&reg), "{family:?} {r:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rules_do_not_depend_on_services_only_on_config_and_timeouts() {
        let s = spec(Family::V4, vec![]);
        let n = rules(&s).len();
        // Per timeout, two postrouting rules remember choices; nothing else grows.
        let mut fewer = s.clone();
        fewer.timeouts.clear();
        assert_eq!(rules(&fewer).len(), n - 4);
        let names: BTreeSet<&str> = rules(&s).iter().map(|r| r.chain).collect();
        assert!(names.len() <= BASE_CHAINS.len() + REGULAR_CHAINS.len());
    }
}
