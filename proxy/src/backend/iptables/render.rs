//! Pure rendering: a family's service table in, the iptables chains and rules that implement
//! it out. Nothing here runs a command; the golden tests pin the output.
//!
//! The shape follows kube-proxy's iptables mode, with our own names:
//!
//! - nat `NETLET-SERVICES` (from PREROUTING and OUTPUT) matches each virtual address and jumps
//!   to the port's chains; its last rule sends node addresses to `NETLET-NODEPORTS`.
//! - `NETLET-SVC-<hash>` balances over the cluster-wide endpoints, `NETLET-SVL-<hash>` over the
//!   node-local ones (traffic policy Local), `NETLET-EXT-<hash>` decides masquerade and policy
//!   for traffic to external addresses and node ports, `NETLET-SEP-<hash>` DNATs to one endpoint.
//! - Balancing is `-m statistic --mode random` with probabilities 1/n, 1/(n-1), …, 1;
//!   ClientIP affinity is `-m recent` keyed by the endpoint chain's name.
//! - Masquerade is decided by marking (`NETLET-MARK-MASQ`) and done in `NETLET-POSTROUTING`:
//!   off-cluster sources to cluster IPs, hairpin (an endpoint reaching itself), and external
//!   traffic with policy Cluster. Pod to service to pod keeps the pod's address.
//! - filter `NETLET-SERVICES` / `NETLET-EXTERNAL-SERVICES` reject traffic to ports without
//!   endpoints at once (TCP reset, ICMP port unreachable) and drop what policy Local cannot serve.

use super::ruleset::{ChainId, Ruleset, Table};
use crate::config::ProxyConfig;
use crate::hash::short_hash;
use crate::model::{Endpoint, IpFamily, Protocol, ServicePort, ServiceTable};
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Prefix of every chain we own; anything else we leave alone.
pub const CHAIN_PREFIX: &str = "NETLET-";
/// Service dispatch (nat) and reject rules for cluster IPs (filter).
pub const SERVICES: &str = "NETLET-SERVICES";
/// Reject/drop rules for external IPs, load-balancer IPs and node ports (filter).
pub const EXTERNAL_SERVICES: &str = "NETLET-EXTERNAL-SERVICES";
/// Node-port dispatch (nat).
pub const NODEPORTS: &str = "NETLET-NODEPORTS";
/// Marks a packet for masquerade.
pub const MARK_MASQ: &str = "NETLET-MARK-MASQ";
/// Masquerades marked packets.
pub const POSTROUTING: &str = "NETLET-POSTROUTING";
/// Accepts forwarded service traffic even when FORWARD's policy is DROP (filter).
pub const FORWARD: &str = "NETLET-FORWARD";
/// Marks traffic from outside every cluster CIDR (only with two or more CIDRs per family).
pub const MASQ_OFF_CLUSTER: &str = "NETLET-MASQ-OFFCLUSTER";
/// The masquerade mark bit.
pub const MASQ_MARK: &str = "0x4000";

/// A jump from one of the kernel's chains into ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Table of the built-in chain.
    pub table: Table,
    /// The built-in chain (`PREROUTING`, …).
    pub chain: &'static str,
    /// Our chain it jumps to.
    pub target: &'static str,
    /// The full rule spec, ending in `-j target`.
    pub spec: String,
}

/// The hooks we keep first in the kernel's chains, in insertion order.
pub fn hooks() -> Vec<Hook> {
    let new = "-m conntrack --ctstate NEW -m comment --comment";
    let portals = "\"netlet service portals\"";
    let external = "\"netlet externally-visible service portals\"";
    let h = |table, chain, target: &'static str, spec: String| Hook {
        table,
        chain,
        target,
        spec: format!("{spec} -j {target}"),
    };
    vec![
        h(
            Table::Filter,
            "INPUT",
            EXTERNAL_SERVICES,
            format!("{new} {external}"),
        ),
        h(
            Table::Filter,
            "FORWARD",
            SERVICES,
            format!("{new} {portals}"),
        ),
        h(
            Table::Filter,
            "FORWARD",
            EXTERNAL_SERVICES,
            format!("{new} {external}"),
        ),
        h(
            Table::Filter,
            "FORWARD",
            FORWARD,
            "-m comment --comment \"netlet forwarding rules\"".into(),
        ),
        h(
            Table::Filter,
            "OUTPUT",
            SERVICES,
            format!("{new} {portals}"),
        ),
        h(
            Table::Filter,
            "OUTPUT",
            EXTERNAL_SERVICES,
            format!("{new} {external}"),
        ),
        h(
            Table::Nat,
            "PREROUTING",
            SERVICES,
            format!("-m comment --comment {portals}"),
        ),
        h(
            Table::Nat,
            "OUTPUT",
            SERVICES,
            format!("-m comment --comment {portals}"),
        ),
        h(
            Table::Nat,
            "POSTROUTING",
            POSTROUTING,
            "-m comment --comment \"netlet postrouting rules\"".into(),
        ),
    ]
}

/// The node facts rendering depends on, for one family.
#[derive(Debug, Clone)]
pub struct RenderContext {
    /// The family rendered.
    pub family: IpFamily,
    /// Cluster CIDRs of that family.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Node IPs of that family that node ports answer on (empty: all local addresses).
    pub node_ips: Vec<IpAddr>,
    /// Masquerade all service traffic.
    pub masquerade_all: bool,
    /// More than [`LARGE_CLUSTER_ENDPOINTS`] endpoints: per-endpoint rules go without
    /// comments, as kube-proxy's "large cluster mode" does, which makes the nat table about a
    /// third smaller, and every legacy commit (which replaces the whole table) that much faster.
    pub large_cluster: bool,
}

/// Endpoints (all ports of the family) above which [`RenderContext::large_cluster`] holds:
/// kube-proxy's threshold.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

impl RenderContext {
    /// The context for one family of a proxy config and the table rendered.
    pub fn new(cfg: &ProxyConfig, family: IpFamily, table: &ServiceTable) -> Self {
        let endpoints: usize = table
            .ports()
            .map(|p| {
                p.endpoints
                    .iter()
                    .filter(|e| e.ip.is_ipv4() == (family == IpFamily::V4))
                    .count()
            })
            .sum();
        Self {
            family,
            cluster_cidrs: cfg.cluster_cidrs_of(family),
            node_ips: cfg.node_ips_of(family),
            masquerade_all: cfg.masquerade_all,
            large_cluster: endpoints > LARGE_CLUSTER_ENDPOINTS,
        }
    }

    /// `-m comment --comment "<text>" ` for a per-endpoint rule, nothing in a large cluster.
    fn endpoint_comment(&self, text: &str) -> String {
        if self.large_cluster {
            String::new()
        } else {
            format!("-m comment --comment \"{text}\" ")
        }
    }
}

/// Rules contributed by one service port: its own chains plus lines for the shared ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chains only this port uses (SVC, SVL, EXT, SEP), all in nat.
    pub own: BTreeMap<String, Vec<String>>,
    /// Rules appended to shared chains, in order.
    pub shared: Vec<(ChainId, String)>,
}

/// The whole ruleset for a family's table (no hooks): what a first sync installs.
pub fn render(table: &ServiceTable, ctx: &RenderContext) -> Ruleset {
    let fragments: Vec<ServiceRules> = table
        .for_family(ctx.family)
        .ports()
        .map(|p| render_service(p, ctx))
        .collect();
    assemble(ctx, fragments.iter())
}

/// Joins the fixed chains and the services' fragments (in the given order) into a ruleset.
pub fn assemble<'a>(
    ctx: &RenderContext,
    fragments: impl Iterator<Item = &'a ServiceRules> + Clone,
) -> Ruleset {
    let mut rs = assemble_shared(ctx, fragments.clone());
    for f in fragments {
        for (name, rules) in &f.own {
            rs.chains.insert(nat(name), rules.clone());
        }
    }
    rs
}

/// Only the chains every Service shares (dispatch, reject, masquerade), with the services'
/// lines in them: what a partial sync rebuilds when a Service's lines there change.
pub fn assemble_shared<'a>(
    ctx: &RenderContext,
    fragments: impl Iterator<Item = &'a ServiceRules>,
) -> Ruleset {
    let mut rs = Ruleset::default();
    for id in [
        filter(SERVICES),
        filter(EXTERNAL_SERVICES),
        nat(SERVICES),
        nat(NODEPORTS),
    ] {
        rs.chain(id);
    }
    rs.push(
        filter(FORWARD),
        "-m conntrack --ctstate INVALID -j DROP".into(),
    );
    rs.push(
        filter(FORWARD),
        format!("-m comment --comment \"netlet forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"),
    );
    rs.push(
        filter(FORWARD),
        "-m comment --comment \"netlet forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );
    rs.push(nat(MARK_MASQ), format!("-j MARK --or-mark {MASQ_MARK}"));
    rs.push(
        nat(POSTROUTING),
        format!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
    );
    // Clear the mark so a packet traversing again (e.g. encapsulated) is not masqueraded twice.
    rs.push(nat(POSTROUTING), format!("-j MARK --xor-mark {MASQ_MARK}"));
    rs.push(
        nat(POSTROUTING),
        "-m comment --comment \"netlet service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    );
    if ctx.cluster_cidrs.len() > 1 && !ctx.masquerade_all {
        for cidr in &ctx.cluster_cidrs {
            rs.push(nat(MASQ_OFF_CLUSTER), format!("-s {} -j RETURN", net(cidr)));
        }
        rs.push(nat(MASQ_OFF_CLUSTER), format!("-j {MARK_MASQ}"));
    }
    for f in fragments {
        for (id, rule) in &f.shared {
            rs.push(id.clone(), rule.clone());
        }
    }
    let comment = "-m comment --comment \"netlet service nodeports; NOTE: this must be the last rule in this chain\"";
    if ctx.node_ips.is_empty() {
        let lo = match ctx.family {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        };
        rs.push(
            nat(SERVICES),
            format!("! -d {lo} {comment} -m addrtype --dst-type LOCAL -j {NODEPORTS}"),
        );
    } else {
        for ip in &ctx.node_ips {
            rs.push(
                nat(SERVICES),
                format!("-d {} {comment} -j {NODEPORTS}", host(ip)),
            );
        }
    }
    rs
}

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn net(n: &IpNetwork) -> String {
    // The network address, not the address the CIDR was written with.
    format!("{}/{}", n.network(), n.prefix())
}

fn reject(proto: Protocol, family: IpFamily) -> &'static str {
    match (proto, family) {
        (Protocol::Tcp, _) => "REJECT --reject-with tcp-reset",
        (_, IpFamily::V4) => "REJECT --reject-with icmp-port-unreachable",
        (_, IpFamily::V6) => "REJECT --reject-with icmp6-port-unreachable",
    }
}

/// The chain names of a service port: `(SVC, SVL, EXT)`.
pub fn port_chains(p: &ServicePort) -> (String, String, String) {
    let h = short_hash(&format!("{}/{}", p.name, p.name.protocol));
    (
        format!("NETLET-SVC-{h}"),
        format!("NETLET-SVL-{h}"),
        format!("NETLET-EXT-{h}"),
    )
}

/// The chain name of one endpoint of a service port.
pub fn endpoint_chain(p: &ServicePort, e: &Endpoint) -> String {
    let addr = SocketAddr::new(e.ip, e.port);
    format!(
        "NETLET-SEP-{}",
        short_hash(&format!("{}/{}/{addr}", p.name, p.name.protocol))
    )
}

/// Renders one service port (already restricted to `ctx.family`).
pub fn render_service(p: &ServicePort, ctx: &RenderContext) -> ServiceRules {
    let r = PortRender::new(p, ctx);
    let mut out = ServiceRules::default();
    let internal_rules = r.cluster_ips(&mut out);
    if p.externally_accessible() {
        r.external(&mut out);
    }
    r.balancing(internal_rules, &mut out);
    out
}

/// What rendering one service port needs, computed once.
struct PortRender<'a> {
    p: &'a ServicePort,
    ctx: &'a RenderContext,
    /// `namespace/name:port`, for comments.
    spn: String,
    proto: &'static str,
    svc: String,
    svl: String,
    ext: String,
    cluster: Vec<&'a Endpoint>,
    local: Vec<&'a Endpoint>,
    reachable: Vec<&'a Endpoint>,
}

fn nat(c: &str) -> ChainId {
    ChainId::new(Table::Nat, c)
}

fn filter(c: &str) -> ChainId {
    ChainId::new(Table::Filter, c)
}

impl<'a> PortRender<'a> {
    fn new(p: &'a ServicePort, ctx: &'a RenderContext) -> Self {
        let (svc, svl, ext) = port_chains(p);
        Self {
            p,
            ctx,
            spn: p.name.to_string(),
            proto: p.name.protocol.as_str(),
            svc,
            svl,
            ext,
            cluster: p.cluster_endpoints(),
            local: p.local_endpoints(),
            reachable: p.reachable_endpoints(),
        }
    }

    fn has_endpoints(&self) -> bool {
        !self.reachable.is_empty()
    }

    /// The chain cluster-IP traffic goes to, if it has endpoints.
    fn internal_chain(&self) -> Option<&str> {
        if self.p.internal_policy_local() {
            (!self.local.is_empty()).then_some(&self.svl)
        } else {
            (!self.cluster.is_empty()).then_some(&self.svc)
        }
    }

    /// The chain external traffic ends in, if it has endpoints.
    fn external_policy_chain(&self) -> Option<&str> {
        if self.p.external_policy_local() {
            (!self.local.is_empty()).then_some(&self.svl)
        } else {
            self.has_endpoints().then_some(&self.svc)
        }
    }

    fn dport(&self, port: u16) -> String {
        format!("-m {} --dport {port}", self.proto)
    }

    /// Matches a virtual address and the service port.
    fn vip(&self, ip: &IpAddr, what: &str) -> String {
        let (spn, proto) = (&self.spn, self.proto);
        let dport = self.dport(self.p.port);
        format!(
            "-d {} -p {proto} -m comment --comment \"{spn} {what}\" {dport}",
            host(ip)
        )
    }

    /// A filter rule for traffic the port cannot serve: rejected when there are no endpoints
    /// at all, dropped when policy Local finds none on this node. `dst` matches the address.
    fn unserved(&self, dst: &str, port: u16) -> String {
        let (spn, proto) = (&self.spn, self.proto);
        let (comment, target) = if self.has_endpoints() {
            (format!("{spn} has no local endpoints"), "DROP")
        } else {
            let reject = reject(self.p.name.protocol, self.ctx.family);
            (format!("{spn} has no endpoints"), reject)
        };
        let dport = self.dport(port);
        format!("{dst} -p {proto} -m comment --comment \"{comment}\" {dport} -j {target}")
    }

    /// Dispatch or reject rules for the cluster IPs; returns the masquerade rules that start
    /// the internal chain.
    fn cluster_ips(&self, out: &mut ServiceRules) -> Vec<String> {
        let mut masq = Vec::new();
        for ip in &self.p.cluster_ips {
            let Some(chain) = self.internal_chain() else {
                let rule = self.unserved(&format!("-d {}", host(ip)), self.p.port);
                out.shared.push((filter(SERVICES), rule));
                continue;
            };
            let m = self.vip(ip, "cluster IP");
            let cidrs = &self.ctx.cluster_cidrs;
            if self.ctx.masquerade_all {
                masq.push(format!("{m} -j {MARK_MASQ}"));
            } else if cidrs.len() == 1 {
                masq.push(format!("! -s {} {m} -j {MARK_MASQ}", net(&cidrs[0])));
            } else if cidrs.len() > 1 {
                masq.push(format!("{m} -j {MASQ_OFF_CLUSTER}"));
            }
            out.shared.push((nat(SERVICES), format!("{m} -j {chain}")));
        }
        masq
    }

    /// External IPs, load-balancer IPs and the node port, which all enter through EXT.
    fn external(&self, out: &mut ServiceRules) {
        let (spn, ext) = (&self.spn, &self.ext);
        let dests: Vec<(&IpAddr, &str)> = (self.p.external_ips.iter())
            .map(|ip| (ip, "external IP"))
            .chain(
                self.p
                    .load_balancer_ips
                    .iter()
                    .map(|ip| (ip, "loadbalancer IP")),
            )
            .collect();
        let policy_chain = self.external_policy_chain();
        if self.has_endpoints() {
            let mut rules = Vec::new();
            let comment = |what: &str| {
                format!("-m comment --comment \"{what} for {spn} external destinations\"")
            };
            if !self.p.external_policy_local() {
                rules.push(format!("{} -j {MARK_MASQ}", comment("masquerade traffic")));
            } else if !self.cluster.is_empty() {
                // Pods and the node itself reach external addresses as if through an outside
                // load balancer: cluster-wide endpoints, and the node's traffic masqueraded.
                let svc = &self.svc;
                for cidr in &self.ctx.cluster_cidrs {
                    rules.push(format!(
                        "-s {} {} -j {svc}",
                        net(cidr),
                        comment("pod traffic")
                    ));
                }
                let local = "-m addrtype --src-type LOCAL";
                rules.push(format!(
                    "{} {local} -j {MARK_MASQ}",
                    comment("masquerade LOCAL traffic")
                ));
                rules.push(format!(
                    "{} {local} -j {svc}",
                    comment("route LOCAL traffic")
                ));
            }
            if let Some(chain) = policy_chain {
                rules.push(format!("-j {chain}"));
            }
            out.own.insert(ext.clone(), rules);
            for (ip, what) in &dests {
                out.shared
                    .push((nat(SERVICES), format!("{} -j {ext}", self.vip(ip, what))));
            }
            if let Some(np) = self.p.node_port {
                let (proto, dport) = (self.proto, self.dport(np));
                let rule = format!("-p {proto} -m comment --comment \"{spn}\" {dport} -j {ext}");
                out.shared.push((nat(NODEPORTS), rule));
            }
        }
        if policy_chain.is_none() {
            for (ip, _) in &dests {
                let rule = self.unserved(&format!("-d {}", host(ip)), self.p.port);
                out.shared.push((filter(EXTERNAL_SERVICES), rule));
            }
            if let Some(np) = self.p.node_port {
                let node_dsts: Vec<String> = if self.ctx.node_ips.is_empty() {
                    vec!["-m addrtype --dst-type LOCAL".into()]
                } else {
                    self.ctx
                        .node_ips
                        .iter()
                        .map(|ip| format!("-d {}", host(ip)))
                        .collect()
                };
                for dst in node_dsts {
                    out.shared
                        .push((filter(EXTERNAL_SERVICES), self.unserved(&dst, np)));
                }
            }
        }
    }

    /// The SVC and SVL chains (the internal one led by `internal_rules`) and the endpoint chains.
    fn balancing(&self, internal_rules: Vec<String>, out: &mut ServiceRules) {
        let internal = self.internal_chain().map(str::to_string);
        for (chain, eps) in [(&self.svc, &self.cluster), (&self.svl, &self.local)] {
            if eps.is_empty() {
                continue;
            }
            let mut rules = if internal.as_ref() == Some(chain) {
                internal_rules.clone()
            } else {
                Vec::new()
            };
            rules.extend(balance(self.p, &self.spn, eps, self.ctx));
            out.own.insert(chain.clone(), rules);
        }
        let (spn, proto) = (&self.spn, self.proto);
        for e in &self.reachable {
            let sep = endpoint_chain(self.p, e);
            let addr = SocketAddr::new(e.ip, e.port);
            let affinity = match self.p.affinity_timeout {
                Some(_) => format!("-m recent --set --name {sep} --rsource "),
                None => String::new(),
            };
            let c = self.ctx.endpoint_comment(spn);
            let rules = vec![
                format!("-s {} {c}-j {MARK_MASQ}", host(&e.ip)),
                format!("-p {proto} {c}{affinity}-j DNAT --to-destination {addr}"),
            ];
            out.own.insert(sep, rules);
        }
    }
}

/// Affinity checks, then the random choice among `eps`.
fn balance(p: &ServicePort, spn: &str, eps: &[&Endpoint], ctx: &RenderContext) -> Vec<String> {
    let mut rules = Vec::new();
    let chains: Vec<(String, SocketAddr)> = eps
        .iter()
        .map(|e| (endpoint_chain(p, e), SocketAddr::new(e.ip, e.port)))
        .collect();
    if let Some(t) = p.affinity_timeout {
        for (sep, addr) in &chains {
            let c = ctx.endpoint_comment(&format!("{spn} -> {addr}"));
            rules.push(format!(
                "{c}-m recent --rcheck --seconds {t} --reap --name {sep} --rsource -j {sep}"
            ));
        }
    }
    let n = chains.len();
    for (i, (sep, addr)) in chains.iter().enumerate() {
        let c = ctx.endpoint_comment(&format!("{spn} -> {addr}"));
        if i + 1 < n {
            let prob = 1.0 / (n - i) as f64;
            rules.push(format!(
                "{c}-m statistic --mode random --probability {prob:.10} -j {sep}"
            ));
        } else {
            rules.push(format!("{c}-j {sep}"));
        }
    }
    rules
}
