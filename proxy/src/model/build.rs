//! [`ServiceTable::build`]: Services and EndpointSlices in, desired table out.
//!
//! Mirrors what kube-proxy reads: Services that are headless or `ExternalName` are not proxied;
//! an endpoint's port comes from the EndpointSlice port whose name equals the service port's
//! name (that is how named `targetPort`s are resolved: the EndpointSlice controller has already
//! looked the name up in each pod); only `addresses[0]` of an endpoint is used; an endpoint that
//! appears in several slices keeps its ready copy. Malformed values are skipped, not fatal: one
//! bad object must not stop every other Service from being programmed.

use super::{
    Endpoint, IpFamily, Protocol, ServiceKey, ServicePort, ServicePortName, ServiceTable,
    TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
};
use crate::config::ProxyConfig;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl ServiceTable {
    /// Computes the desired table. Pure: same input, same table, whatever the input order.
    pub fn build(services: &[Service], slices: &[EndpointSlice], cfg: &ProxyConfig) -> Self {
        let mut by_service: BTreeMap<ServiceKey, Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            let labels = s.metadata.labels.as_ref();
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_deref(),
                labels.and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            by_service
                .entry(ServiceKey::new(ns, svc.as_str()))
                .or_default()
                .push(s);
        }
        for v in by_service.values_mut() {
            v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let mut ports = Vec::new();
        let mut health_checks = Vec::new();
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            let key = ServiceKey::new(ns, name);
            let svc_slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(port) = health_check_node_port(spec) {
                health_checks.push((key.clone(), port));
            }
            ports.extend(service_ports(key, svc, spec, svc_slices, cfg));
        }
        let mut table = Self::from_ports(ports);
        for (key, port) in health_checks {
            table.set_health_check_node_port(key, port);
        }
        table
    }
}

/// `spec.healthCheckNodePort`, which only LoadBalancer Services with `externalTrafficPolicy:
/// Local` have (the apiserver allocates it; load balancers probe it to find nodes with local
/// endpoints).
fn health_check_node_port(spec: &ServiceSpec) -> Option<u16> {
    let lb = spec.type_.as_deref() == Some("LoadBalancer");
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let has_cluster_ip = spec
        .cluster_ip
        .as_deref()
        .is_some_and(|ip| ip.parse::<IpAddr>().is_ok());
    spec.health_check_node_port
        .filter(|_| lb && local && has_cluster_ip)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn parse_ips<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = values.into_iter().filter_map(|v| v.parse().ok()).collect();
    ips.dedup();
    ips
}

fn service_ports(
    key: ServiceKey,
    svc: &Service,
    spec: &ServiceSpec,
    slices: &[&EndpointSlice],
    cfg: &ProxyConfig,
) -> Vec<ServicePort> {
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Vec::new();
    }
    let cluster_ips = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => parse_ips(ips),
        _ => parse_ips(spec.cluster_ip.as_ref()),
    };
    if cluster_ips.is_empty() {
        // Headless (`None`) or not yet allocated: nothing to proxy.
        return Vec::new();
    }
    let mut external_ips = parse_ips(spec.external_ips.iter().flatten());
    external_ips.sort();
    external_ips.dedup();
    let mut load_balancer_ips = Vec::new();
    if kind == "LoadBalancer" {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        load_balancer_ips = parse_ips(
            ingress
                .into_iter()
                .flatten()
                // `Proxy` mode: the load balancer itself delivers to the node; no VIP here.
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_ref()),
        );
        load_balancer_ips.sort();
        load_balancer_ips.dedup();
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    });
    let policy = |p: Option<&str>| match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let external_policy = policy(spec.external_traffic_policy.as_deref());
    let internal_policy = policy(spec.internal_traffic_policy.as_deref());
    let with_node_port = kind == "NodePort" || kind == "LoadBalancer";

    let mut out = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let (Some(protocol), Ok(port)) = (
            Protocol::from_k8s(sp.protocol.as_deref()),
            u16::try_from(sp.port),
        ) else {
            continue;
        };
        let name = ServicePortName {
            service: key.clone(),
            port: sp.name.clone().unwrap_or_default(),
            protocol,
        };
        let node_port = sp
            .node_port
            .filter(|_| with_node_port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let endpoints = resolve_endpoints(&name, slices, cfg);
        out.push(ServicePort {
            name,
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_timeout,
            external_policy,
            internal_policy,
            endpoints,
        });
    }
    out
}

/// Endpoints of one service port, from the slice ports named like it.
fn resolve_endpoints(
    name: &ServicePortName,
    slices: &[&EndpointSlice],
    cfg: &ProxyConfig,
) -> Vec<Endpoint> {
    let mut found: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for slice in slices {
        let family = match slice.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            _ => continue, // FQDN slices are not proxied.
        };
        let port = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or("") == name.port;
            let same_proto = Protocol::from_k8s(p.protocol.as_deref()) == Some(name.protocol);
            (same_name && same_proto)
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
        });
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().flatten() {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if IpFamily::of(&ip) != family {
                continue;
            }
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let endpoint = Endpoint {
                ip,
                port,
                ready,
                serving: cond.and_then(|c| c.serving).unwrap_or(true),
                terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                local: ep.node_name.as_deref() == Some(cfg.node_name.as_str()),
            };
            let slot = found.entry((ip, port));
            match slot {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(endpoint);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    if endpoint.ready {
                        o.insert(endpoint);
                    }
                }
            }
        }
    }
    found.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        svc(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80, "targetPort": "web"}
            ]}
        }))
    }

    #[test]
    fn named_port_resolves_per_slice() {
        let slices = [
            slice(json!({
                "metadata": {"namespace": "default", "name": "web-a",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.244.1.2"]}]
            })),
            slice(json!({
                "metadata": {"namespace": "default", "name": "web-b",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9090}],
                "endpoints": [{"addresses": ["10.244.2.2"]}]
            })),
        ];
        let t = ServiceTable::build(&[web()], &slices, &ProxyConfig::new("n"));
        let p = t.ports().next().unwrap();
        let eps: Vec<_> = p
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port))
            .collect();
        assert_eq!(
            eps,
            [("10.244.1.2".into(), 8080), ("10.244.2.2".into(), 9090)]
        );
    }

    #[test]
    fn headless_and_external_name_are_skipped() {
        let headless = svc(json!({
            "metadata": {"namespace": "a", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        let ext = svc(json!({
            "metadata": {"namespace": "a", "name": "e"},
            "spec": {"type": "ExternalName", "externalName": "x.example", "ports": [{"port": 80}]}
        }));
        let t = ServiceTable::build(&[headless, ext], &[], &ProxyConfig::new("n"));
        assert!(t.is_empty(), "{t}");
    }

    #[test]
    fn duplicate_endpoint_prefers_ready_copy() {
        let mk = |name: &str, ready: bool| {
            slice(json!({
                "metadata": {"namespace": "default", "name": name,
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": ready}}]
            }))
        };
        for order in [
            [mk("a", true), mk("b", false)],
            [mk("a", false), mk("b", true)],
        ] {
            let t = ServiceTable::build(&[web()], &order, &ProxyConfig::new("n"));
            let p = t.ports().next().unwrap();
            assert_eq!(p.endpoints.len(), 1);
            assert!(p.endpoints[0].ready);
        }
    }
    #[test]
    fn health_check_node_port_only_for_local_load_balancers() {
        let lb = |policy: &str, kind: &str| {
            svc(json!({
                "metadata": {"namespace": "default", "name": format!("{kind}-{policy}")},
                "spec": {"type": kind, "clusterIP": "10.96.0.10", "externalTrafficPolicy": policy,
                         "healthCheckNodePort": 32000, "ports": [{"port": 80, "nodePort": 30080}]}
            }))
        };
        let t = ServiceTable::build(
            &[
                lb("Local", "LoadBalancer"),
                lb("Cluster", "LoadBalancer"),
                lb("Local", "NodePort"),
            ],
            &[],
            &ProxyConfig::new("n"),
        );
        let ports: Vec<_> = t.health_check_node_ports().iter().collect();
        assert_eq!(
            ports,
            [(&ServiceKey::new("default", "LoadBalancer-Local"), &32000)]
        );
        assert_eq!(
            t.for_family(IpFamily::V4).health_check_node_ports().len(),
            1
        );
    }
}
