//! The desired service table: what every backend programs, computed from Services and
//! EndpointSlices by pure code ([`ServiceTable::build`]).
//!
//! One [`ServicePort`] per (Service, port) carries its virtual addresses, its node port, its
//! policies and the endpoints resolved from the Service's EndpointSlices. Which endpoints take
//! which traffic follows kube-proxy's rules (see [`ServicePort::cluster_endpoints`] and
//! [`ServicePort::local_endpoints`]), so every backend makes the same choice.
//!
//! The table prints as stable text (`Display`), which the golden tests compare.

mod build;

pub use build::SERVICE_NAME_LABEL;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), as in Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// A Service's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); the API's default is TCP.
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Lower-case name, as iptables and nftables spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IP address family; each backend programs the families the node serves separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node; the client's source IP is kept.
    Local,
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        })
    }
}

/// One port of one Service, as in kube-proxy's `ServicePortName`: the unit backends program.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The owning Service.
    pub service: ServiceKey,
    /// The port's name; empty for a Service's single unnamed port.
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// The smallest name a port of Service `key` can have: a Service's port names sort
    /// together from here, so maps keyed by port name find one Service's ports by a range.
    pub fn first_of(key: &ServiceKey) -> Self {
        Self {
            service: key.clone(),
            port: String::new(),
            protocol: Protocol::Tcp,
        }
    }
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port` (the port part omitted when unnamed), kube-proxy's spelling, which
    /// also appears in rule comments.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

/// A resolved endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's address (`addresses[0]` of the EndpointSlice endpoint).
    pub ip: IpAddr,
    /// The target port number, from the EndpointSlice port named like the service port.
    pub port: u16,
    /// `conditions.ready` (unset means ready).
    pub ready: bool,
    /// `conditions.serving` (unset means serving).
    pub serving: bool,
    /// `conditions.terminating` (unset means not terminating).
    pub terminating: bool,
    /// The node the endpoint runs on, if known.
    pub node_name: Option<String>,
    /// The endpoint's zone, if known.
    pub zone: Option<String>,
    /// Whether `node_name` is this proxy's node.
    pub local: bool,
}

impl Endpoint {
    /// May take traffic only as a fallback: still serving but shutting down.
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Everything a backend needs to program one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Identity of this service port.
    pub name: ServicePortName,
    /// `spec.clusterIPs` (one per family).
    pub cluster_ips: Vec<IpAddr>,
    /// The service port number (the port on every virtual address).
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer Services that have one.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` whose `ipMode` is not `Proxy`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// ClientIP session affinity timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// `spec.externalTrafficPolicy` (meaningful only when externally accessible).
    pub external_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_policy: TrafficPolicy,
    /// All endpoints, sorted by address and port, whatever their conditions.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Reachable from outside the cluster network: node port, external IPs or LB IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// `externalTrafficPolicy: Local` on an externally accessible port.
    pub fn external_policy_local(&self) -> bool {
        self.externally_accessible() && self.external_policy == TrafficPolicy::Local
    }

    /// `internalTrafficPolicy: Local`.
    pub fn internal_policy_local(&self) -> bool {
        self.internal_policy == TrafficPolicy::Local
    }

    /// Some traffic goes to endpoints anywhere in the cluster. Always true for externally
    /// accessible ports: even with `externalTrafficPolicy: Local`, pods and the node itself
    /// reach external addresses through the cluster-wide endpoints (kube-proxy's short circuit).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local() || self.externally_accessible()
    }

    /// Some traffic goes only to endpoints on this node.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local() || self.external_policy_local()
    }

    /// Endpoints for cluster-wide traffic: the ready ones, or, only when none is ready, those
    /// still serving while terminating (kube-proxy's `CategorizeEndpoints`). Empty when the port
    /// uses no cluster-wide endpoints.
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        if !self.uses_cluster_endpoints() {
            return Vec::new();
        }
        select(self.endpoints.iter())
    }

    /// Endpoints for node-local traffic: the ready local ones, or, only when none is ready,
    /// local ones serving while terminating. Empty when the port uses no local endpoints.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        if !self.uses_local_endpoints() {
            return Vec::new();
        }
        select(self.endpoints.iter().filter(|e| e.local))
    }

    /// Union of [`Self::cluster_endpoints`] and [`Self::local_endpoints`], in endpoint order.
    pub fn reachable_endpoints(&self) -> Vec<&Endpoint> {
        let cluster = self.cluster_endpoints();
        let local = self.local_endpoints();
        self.endpoints
            .iter()
            .filter(|e| cluster.iter().chain(&local).any(|c| std::ptr::eq(*c, *e)))
            .collect()
    }

    /// The same port restricted to one family, or `None` if it has no cluster IP there.
    pub fn for_family(&self, family: IpFamily) -> Option<ServicePort> {
        let keep = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == family)
                .collect()
        };
        let cluster_ips = keep(&self.cluster_ips);
        if cluster_ips.is_empty() {
            return None;
        }
        Some(ServicePort {
            cluster_ips,
            external_ips: keep(&self.external_ips),
            load_balancer_ips: keep(&self.load_balancer_ips),
            endpoints: self
                .endpoints
                .iter()
                .filter(|e| IpFamily::of(&e.ip) == family)
                .cloned()
                .collect(),
            ..self.clone()
        })
    }
}

fn select<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<_> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving_terminating()).collect()
}

/// The desired state of every service port on this node, ordered by [`ServicePortName`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    ports: BTreeMap<ServicePortName, ServicePort>,
    /// `spec.healthCheckNodePort` of LoadBalancer Services with `externalTrafficPolicy:
    /// Local`: a per-Service fact, not a port's (see [`crate::health_check`]).
    health_check_node_ports: BTreeMap<ServiceKey, u16>,
}

impl ServiceTable {
    /// A table holding exactly these ports (later duplicates replace earlier ones).
    pub fn from_ports(ports: impl IntoIterator<Item = ServicePort>) -> Self {
        Self {
            ports: ports.into_iter().map(|p| (p.name.clone(), p)).collect(),
            health_check_node_ports: BTreeMap::new(),
        }
    }

    /// The Services that have a health check node port, and that port.
    pub fn health_check_node_ports(&self) -> &BTreeMap<ServiceKey, u16> {
        &self.health_check_node_ports
    }

    /// Sets `key`'s health check node port (the table is built without any).
    pub fn set_health_check_node_port(&mut self, key: ServiceKey, port: u16) {
        self.health_check_node_ports.insert(key, port);
    }

    /// All service ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.values()
    }

    /// One service port.
    pub fn get(&self, name: &ServicePortName) -> Option<&ServicePort> {
        self.ports.get(name)
    }

    /// The ports of one Service, in order (a range lookup, not a scan).
    pub fn ports_of<'a>(&'a self, key: &'a ServiceKey) -> impl Iterator<Item = &'a ServicePort> {
        self.ports
            .range(ServicePortName::first_of(key)..)
            .take_while(move |(n, _)| &n.service == key)
            .map(|(_, p)| p)
    }

    /// The Services present.
    pub fn services(&self) -> BTreeSet<ServiceKey> {
        self.ports.keys().map(|n| n.service.clone()).collect()
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// No service ports at all.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The table one family's backend programs: addresses and endpoints of that family only,
    /// ports without a cluster IP in it dropped.
    pub fn for_family(&self, family: IpFamily) -> ServiceTable {
        Self {
            health_check_node_ports: self.health_check_node_ports.clone(),
            ..Self::from_ports(self.ports().filter_map(|p| p.for_family(family)))
        }
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for ServiceTable {
    /// One block per service port; the format of the golden files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.ports() {
            write!(f, "{} {} port={}", p.name, p.name.protocol, p.port)?;
            if let Some(np) = p.node_port {
                write!(f, " nodePort={np}")?;
            }
            if let Some(t) = p.affinity_timeout {
                write!(f, " affinity=ClientIP/{t}s")?;
            }
            writeln!(
                f,
                " external={} internal={}",
                p.external_policy, p.internal_policy
            )?;
            writeln!(f, "  clusterIPs: {}", join_ips(&p.cluster_ips))?;
            if !p.external_ips.is_empty() {
                writeln!(f, "  externalIPs: {}", join_ips(&p.external_ips))?;
            }
            if !p.load_balancer_ips.is_empty() {
                writeln!(f, "  loadBalancerIPs: {}", join_ips(&p.load_balancer_ips))?;
            }
            for e in &p.endpoints {
                let addr = std::net::SocketAddr::new(e.ip, e.port);
                let mut conds = Vec::new();
                for (on, name) in [
                    (e.ready, "ready"),
                    (e.serving, "serving"),
                    (e.terminating, "terminating"),
                ] {
                    if on {
                        conds.push(name);
                    }
                }
                let conds = if conds.is_empty() {
                    "-".to_string()
                } else {
                    conds.join(",")
                };
                write!(f, "  endpoint {addr} {conds}")?;
                if let Some(n) = &e.node_name {
                    write!(f, " node={n}")?;
                }
                if let Some(z) = &e.zone {
                    write!(f, " zone={z}")?;
                }
                writeln!(f, "{}", if e.local { " local" } else { "" })?;
            }
            let show = |eps: Vec<&Endpoint>| {
                eps.iter()
                    .map(|e| std::net::SocketAddr::new(e.ip, e.port).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            if p.uses_cluster_endpoints() {
                writeln!(f, "  -> cluster: [{}]", show(p.cluster_endpoints()))?;
            }
            if p.uses_local_endpoints() {
                writeln!(f, "  -> local: [{}]", show(p.local_endpoints()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, ready: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            ready,
            serving: ready || terminating,
            terminating,
            node_name: None,
            zone: None,
            local,
        }
    }

    fn port(svc: &str, name: &str, endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                service: ServiceKey::new("ns", svc),
                port: name.into(),
                protocol: Protocol::Udp,
            },
            cluster_ips: vec!["10.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            port: 80,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_timeout: None,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
            endpoints,
        }
    }

    #[test]
    fn ports_of_finds_exactly_one_services_ports() {
        let t = ServiceTable::from_ports([
            port("a", "", vec![]),
            port("a", "x", vec![]),
            port("ab", "", vec![]),
            port("b", "", vec![]),
        ]);
        let a = ServiceKey::new("ns", "a");
        let names: Vec<_> = t.ports_of(&a).map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["ns/a", "ns/a:x"]);
        assert_eq!(t.ports_of(&ServiceKey::new("ns", "zz")).count(), 0);
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_endpoints_only() {
        let mut p = port(
            "a",
            "",
            vec![
                ep("10.0.0.1", true, false, false),
                ep("10.0.0.2", false, true, true),
                ep("10.0.0.3", false, false, true),
            ],
        );
        p.internal_policy = TrafficPolicy::Local;
        assert!(!p.uses_cluster_endpoints());
        let local: Vec<_> = p
            .local_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(local, ["10.0.0.2"]);
        p.internal_policy = TrafficPolicy::Cluster;
        let cluster: Vec<_> = p
            .cluster_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(
            cluster,
            ["10.0.0.1"],
            "ready endpoints exist: no terminating ones"
        );
    }

    #[test]
    fn for_family_keeps_only_that_family() {
        let p = port(
            "a",
            "",
            vec![
                ep("10.0.0.1", true, false, false),
                ep("fd00::5", true, false, false),
            ],
        );
        let v6 = p.for_family(IpFamily::V6).unwrap();
        assert_eq!(v6.cluster_ips, ["fd00::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(v6.endpoints.len(), 1);
        let mut v4only = p.clone();
        v4only.cluster_ips.truncate(1);
        assert!(v4only.for_family(IpFamily::V6).is_none());
    }
}
