//! UDP conntrack cleanup after a sync, as kube-proxy does it.
//!
//! UDP has no connection to close: a client that keeps sending from one source port keeps
//! matching the conntrack entry whose NAT was chosen by the first datagram, so when that
//! endpoint leaves the Service the flow would stick to it (a dead pod, or one no longer
//! ready) until the entry times out. After each successful sync the proxy therefore compares
//! the previous table with the new one ([`plan`]) and deletes ([`ConntrackTable`]):
//!
//! - for each UDP endpoint no longer reachable through a service port, the entries whose
//!   original destination is one of the port's frontends (cluster IP, external IP, LB IP at
//!   the service port, or the node port on any address) and whose reply source (the DNAT
//!   target) is that endpoint;
//! - for each UDP service port that gains its first endpoint, the entries to its frontends
//!   (cached while the port rejected).
//!
//! [`cleanup`] is the one function every backend path uses (the sync loop calls it for the
//! iptables and nftables backends; the eBPF backend can call it the same way). The kernel edge
//! is [`ctnetlink::NetlinkConntrack`] (ctnetlink over `NETLINK_NETFILTER`, no `conntrack` CLI).

pub mod ctnetlink;

use crate::error::Result;
use crate::model::{Protocol, ServicePort, ServicePortName, ServiceTable};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

pub use ctnetlink::NetlinkConntrack;

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (17 for UDP).
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// A conntrack entry as the kernel lists it: what is needed to match and delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The direction of the first packet (client → service address).
    pub orig: Tuple,
    /// The expected answer; after DNAT its source is the endpoint.
    pub reply: Tuple,
    /// `CTA_ZONE`, when not the default zone.
    pub zone: Option<u16>,
    /// `CTA_ID`, so a delete cannot hit a newer entry with the same tuple.
    pub id: Option<u32>,
}

/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;

/// Which entries to delete; unset fields match anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Filter {
    /// IP protocol number.
    pub proto: u8,
    /// Original destination address (a service frontend).
    pub orig_dst_ip: Option<IpAddr>,
    /// Original destination port (the service or node port).
    pub orig_dst_port: Option<u16>,
    /// Reply source address and port: the endpoint the entry was DNATed to.
    pub reply_src: Option<(IpAddr, u16)>,
}

impl Filter {
    /// Whether `flow` is one of the entries this filter deletes.
    pub fn matches(&self, flow: &Flow) -> bool {
        flow.orig.proto == self.proto
            && self.orig_dst_ip.is_none_or(|ip| flow.orig.dst == ip)
            && self.orig_dst_port.is_none_or(|p| flow.orig.dport == p)
            && self
                .reply_src
                .is_none_or(|(ip, port)| flow.reply.src == ip && flow.reply.sport == port)
    }

    /// Whether the filter can match entries of IPv6 (else IPv4) flows.
    pub fn is_ipv6(&self) -> bool {
        self.orig_dst_ip
            .or(self.reply_src.map(|(ip, _)| ip))
            .is_some_and(|ip| ip.is_ipv6())
    }
}

impl fmt::Display for Filter {
    /// `udp dst=10.96.0.10:53 reply-src=10.244.1.10:5353`, `*` for unset fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.proto == IPPROTO_UDP {
            "udp".to_string()
        } else {
            format!("proto{}", self.proto)
        };
        let ip = self.orig_dst_ip.map_or("*".into(), |i| i.to_string());
        let port = self.orig_dst_port.map_or("*".into(), |p| p.to_string());
        write!(f, "{proto} dst={ip}:{port}")?;
        if let Some((ip, port)) = self.reply_src {
            write!(f, " reply-src={ip}:{port}")?;
        }
        Ok(())
    }
}

/// The kernel's connection tracking table, narrowed to what the proxy does with it.
pub trait ConntrackTable: Send {
    /// Deletes every entry matching one of `filters`; returns how many were deleted.
    fn delete_matching(&mut self, filters: &[Filter]) -> Result<usize>;
}

/// The reachable UDP endpoints of a port (those traffic may be sent to).
fn udp_endpoints(port: Option<&ServicePort>) -> BTreeSet<(IpAddr, u16)> {
    port.filter(|p| p.name.protocol == Protocol::Udp)
        .map(|p| {
            p.reachable_endpoints()
                .iter()
                .map(|e| (e.ip, e.port))
                .collect()
        })
        .unwrap_or_default()
}

/// Filters for the entries to `port`'s frontends, optionally only those DNATed to `reply_src`.
fn frontend_filters(port: &ServicePort, reply_src: Option<(IpAddr, u16)>, out: &mut Vec<Filter>) {
    let frontends = port
        .cluster_ips
        .iter()
        .chain(&port.external_ips)
        .chain(&port.load_balancer_ips);
    for ip in frontends {
        // Entries of the other family cannot be DNATed to this endpoint.
        if reply_src.is_some_and(|(ep, _)| ep.is_ipv6() != ip.is_ipv6()) {
            continue;
        }
        out.push(Filter {
            proto: IPPROTO_UDP,
            orig_dst_ip: Some(*ip),
            orig_dst_port: Some(port.port),
            reply_src,
        });
    }
    if let Some(np) = port.node_port {
        out.push(Filter {
            proto: IPPROTO_UDP,
            orig_dst_ip: None,
            orig_dst_port: Some(np),
            reply_src,
        });
    }
}

/// What to delete after the dataplane went from `old` to `new` (pure; see the module docs).
pub fn plan(old: &ServiceTable, new: &ServiceTable) -> Vec<Filter> {
    let names: BTreeSet<&ServicePortName> = old
        .ports()
        .chain(new.ports())
        .filter(|p| p.name.protocol == Protocol::Udp)
        .map(|p| &p.name)
        .collect();
    let mut out = Vec::new();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        let was = udp_endpoints(before);
        let is = udp_endpoints(after);
        if let Some(before) = before {
            for gone in was.difference(&is) {
                frontend_filters(before, Some(*gone), &mut out);
            }
        }
        if let Some(after) = after {
            if was.is_empty() && !is.is_empty() {
                frontend_filters(after, None, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Deletes the entries [`plan`] selects; returns how many were deleted (0 without work, in
/// which case the kernel is not asked at all).
pub fn cleanup(
    table: &mut dyn ConntrackTable,
    old: &ServiceTable,
    new: &ServiceTable,
) -> Result<usize> {
    let filters = plan(old, new);
    if filters.is_empty() {
        return Ok(0);
    }
    let deleted = table.delete_matching(&filters)?;
    tracing::debug!(
        filters = filters.len(),
        deleted,
        "deleted stale UDP conntrack entries"
    );
    Ok(deleted)
}

/// A table in memory: what the fake kernel holds, for tests of the layers above.
#[derive(Debug, Default, Clone)]
pub struct MemoryConntrack {
    /// The entries, keyed by their original tuple.
    pub flows: BTreeMap<Tuple, Flow>,
}

impl ConntrackTable for MemoryConntrack {
    fn delete_matching(&mut self, filters: &[Filter]) -> Result<usize> {
        let before = self.flows.len();
        self.flows
            .retain(|_, f| !filters.iter().any(|filter| filter.matches(f)));
        Ok(before - self.flows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn table(node_port: bool, ips: &[&str]) -> ServiceTable {
        let mut spec = json!({"clusterIP": "10.96.0.10", "externalIPs": ["203.0.113.1"],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "web", "port": 80, "protocol": "TCP"}]});
        if node_port {
            spec["type"] = json!("NodePort");
            spec["ports"][0]["nodePort"] = json!(30053);
        }
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"namespace": "kube-system", "name": "dns"}, "spec": spec}),
        )
        .unwrap();
        let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "kube-system", "name": "dns-1",
                "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                      {"name": "web", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }))
        .unwrap();
        ServiceTable::build(&[svc], &[slice], &ProxyConfig::new("n"))
    }

    fn text(filters: &[Filter]) -> Vec<String> {
        filters.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn removed_udp_endpoint_clears_entries_nated_to_it_on_every_frontend() {
        let old = table(true, &["10.244.1.10", "10.244.1.11"]);
        let new = table(true, &["10.244.1.11"]);
        // The TCP port lost the endpoint too: TCP entries are left to the endpoint's resets.
        assert_eq!(
            text(&plan(&old, &new)),
            [
                "udp dst=*:30053 reply-src=10.244.1.10:5353",
                "udp dst=10.96.0.10:53 reply-src=10.244.1.10:5353",
                "udp dst=203.0.113.1:53 reply-src=10.244.1.10:5353",
            ]
        );
        assert!(plan(&new, &new).is_empty(), "no change, nothing to delete");
    }

    #[test]
    fn first_endpoint_clears_entries_to_the_service_and_removal_clears_the_last() {
        let empty = table(false, &[]);
        let one = table(false, &["10.244.1.10"]);
        assert_eq!(
            text(&plan(&empty, &one)),
            ["udp dst=10.96.0.10:53", "udp dst=203.0.113.1:53"]
        );
        // A Service that disappears took its endpoints with it.
        assert_eq!(
            text(&plan(&one, &ServiceTable::default())),
            [
                "udp dst=10.96.0.10:53 reply-src=10.244.1.10:5353",
                "udp dst=203.0.113.1:53 reply-src=10.244.1.10:5353",
            ]
        );
    }

    #[test]
    fn not_ready_endpoint_counts_as_gone() {
        let old = table(false, &["10.244.1.10", "10.244.1.11"]);
        let mut new = old.clone();
        let ports: Vec<ServicePort> = new
            .ports()
            .cloned()
            .map(|mut p| {
                p.endpoints[0].ready = false;
                p
            })
            .collect();
        new = ServiceTable::from_ports(ports);
        assert_eq!(plan(&old, &new).len(), 2, "{:?}", text(&plan(&old, &new)));
    }

    #[test]
    fn cleanup_deletes_only_matching_flows() {
        let flow = |sport: u16, dst: &str, ep: &str| {
            let client: IpAddr = "10.244.200.2".parse().unwrap();
            let orig = Tuple {
                src: client,
                dst: dst.parse().unwrap(),
                proto: IPPROTO_UDP,
                sport,
                dport: 53,
            };
            let reply = Tuple {
                src: ep.parse().unwrap(),
                dst: client,
                proto: IPPROTO_UDP,
                sport: 5353,
                dport: sport,
            };
            Flow {
                orig,
                reply,
                zone: None,
                id: None,
            }
        };
        let mut ct = MemoryConntrack::default();
        for f in [
            flow(40000, "10.96.0.10", "10.244.1.10"),
            flow(40001, "10.96.0.10", "10.244.1.11"),
            flow(40002, "10.96.0.99", "10.244.1.10"),
        ] {
            ct.flows.insert(f.orig, f);
        }
        let old = table(false, &["10.244.1.10", "10.244.1.11"]);
        let new = table(false, &["10.244.1.11"]);
        assert_eq!(cleanup(&mut ct, &old, &new).unwrap(), 1);
        let left: Vec<_> = ct
            .flows
            .values()
            .map(|f| (f.orig.dst.to_string(), f.reply.src.to_string()))
            .collect();
        assert_eq!(
            left,
            [
                ("10.96.0.10".into(), "10.244.1.11".into()),
                ("10.96.0.99".into(), "10.244.1.10".into()),
            ]
        );
    }
}
