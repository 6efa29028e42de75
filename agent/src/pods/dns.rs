//! A pod's resolver configuration, from its `dnsPolicy` and `dnsConfig`.
//!
//! `ClusterFirst` (the default) points the pod at the cluster DNS with the namespace's search
//! path when the node knows a cluster DNS address; without one (no DNS add-on) it falls back
//! to the node's resolv.conf, as `Default` does. Host-network pods get the node's resolver
//! unless they ask for `ClusterFirstWithHostNet`. `dnsConfig` is appended last; `None` uses
//! only it.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::cri::api;

/// The node-side inputs of DNS configuration.
#[derive(Debug, Clone, Default)]
pub struct ClusterDns {
    /// Cluster DNS server addresses (empty: none deployed).
    pub servers: Vec<IpAddr>,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// The node's resolv.conf contents.
    pub host_resolv_conf: String,
}

/// The DNS config for `pod`.
pub fn dns_config(pod: &Pod, dns: &ClusterDns) -> api::DnsConfig {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut out = if policy == "None" {
        api::DnsConfig::default()
    } else if cluster && !dns.servers.is_empty() {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let d = &dns.domain;
        api::DnsConfig {
            servers: dns.servers.iter().map(ToString::to_string).collect(),
            searches: vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
            options: vec!["ndots:5".into()],
        }
    } else {
        parse_resolv_conf(&dns.host_resolv_conf)
    };
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        out.servers
            .extend(c.nameservers.clone().unwrap_or_default());
        out.searches.extend(c.searches.clone().unwrap_or_default());
        for o in c.options.clone().unwrap_or_default() {
            let Some(name) = o.name else { continue };
            out.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            out.options.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    out
}

/// The `nameserver`, `search` and `options` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> api::DnsConfig {
    let mut out = api::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => out.servers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => {
                out.searches = words.map(str::to_string).collect();
            }
            Some("options") => out.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

    fn pod(policy: Option<&str>, host_network: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("team".into());
        p.spec = Some(PodSpec {
            dns_policy: policy.map(str::to_string),
            host_network: Some(host_network),
            ..Default::default()
        });
        p
    }

    fn node(servers: &[&str]) -> ClusterDns {
        ClusterDns {
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            domain: "cluster.local".into(),
            host_resolv_conf: "# x\nnameserver 192.0.2.53\nsearch example.org\noptions edns0\n"
                .into(),
        }
    }

    #[test]
    fn cluster_first_uses_cluster_dns() {
        let c = dns_config(&pod(None, false), &node(&["10.96.0.10"]));
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(c.searches[0], "team.svc.cluster.local");
        assert_eq!(c.options, ["ndots:5"]);
    }

    #[test]
    fn without_cluster_dns_or_on_host_network_the_node_resolver() {
        let c = dns_config(&pod(None, false), &node(&[]));
        assert_eq!(c.servers, ["192.0.2.53"]);
        assert_eq!(c.searches, ["example.org"]);
        let h = dns_config(&pod(None, true), &node(&["10.96.0.10"]));
        assert_eq!(h.servers, ["192.0.2.53"]);
        let w = dns_config(
            &pod(Some("ClusterFirstWithHostNet"), true),
            &node(&["10.96.0.10"]),
        );
        assert_eq!(w.servers, ["10.96.0.10"]);
    }

    #[test]
    fn none_takes_only_dns_config() {
        let mut p = pod(Some("None"), false);
        p.spec.as_mut().unwrap().dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: None,
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
        });
        let c = dns_config(&p, &node(&["10.96.0.10"]));
        assert_eq!(c.servers, ["1.1.1.1"]);
        assert!(c.searches.is_empty());
        assert_eq!(c.options, ["ndots:2"]);
    }
}
