//! [`ProxyConfig`]: the node facts the service table and the backends depend on.

use crate::model::IpFamily;
use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// What the proxy knows about its node and cluster; read once at start and passed down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// This node's name: endpoints whose `nodeName` equals it are local.
    pub node_name: String,
    /// Addresses NodePorts answer on. Empty means every local address of the node.
    pub node_ips: Vec<IpAddr>,
    /// The pod network(s). Traffic to a cluster IP from outside them is masqueraded so the
    /// reply returns through this node; traffic from pods keeps its source address.
    /// Empty means "unknown": off-cluster traffic is then not masqueraded (as kube-proxy).
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Masquerade all service traffic, also pod to service (kube-proxy `--masquerade-all`).
    pub masquerade_all: bool,
    /// Families the node proxies; a backend programs each separately.
    pub families: Vec<IpFamily>,
}

impl ProxyConfig {
    /// A config for `node_name` with no node IPs or cluster CIDRs, IPv4 only.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            families: vec![IpFamily::V4],
        }
    }

    /// The node IPs of one family.
    pub fn node_ips_of(&self, family: IpFamily) -> Vec<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == family)
            .collect()
    }

    /// The cluster CIDRs of one family.
    pub fn cluster_cidrs_of(&self, family: IpFamily) -> Vec<IpNetwork> {
        self.cluster_cidrs
            .iter()
            .copied()
            .filter(|n| IpFamily::of(&n.ip()) == family)
            .collect()
    }
}
