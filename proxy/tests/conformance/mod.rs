//! Backend conformance suite: real traffic through a one-node cluster in namespaces, the same
//! cases for every backend.
//!
//! A backend's test file declares `#[macro_use] mod conformance;` and invokes
//! `conformance_suite!(harness_expression);`, which expands to one `#[test]` per case, so the
//! cases run in parallel, each in its own namespaces (a single `run_suite` function would run
//! them one after another and report only the first failure).

#![allow(dead_code)] // Each backend's test binary uses its own subset of the helpers.

pub mod cases;
pub mod conntrack;
pub mod health_check;
pub mod topology;

use integration::NetNs;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlet_proxy::{Backend, ProxyConfig, ServiceTable};
use serde_json::{json, Value};

/// What a backend's datapath can do. A case needing a missing capability checks the
/// backend's documented substitute instead: a refused sync naming the Service and feature
/// (`session_affinity`, `external_frontends`), dropped packets (`reject`), or untranslated
/// traffic (`masquerade`).
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Services without endpoints reject (TCP reset, ICMP port unreachable).
    pub reject: bool,
    /// `sessionAffinity: ClientIP`.
    pub session_affinity: bool,
    /// Hairpin and off-cluster-client masquerading.
    pub masquerade: bool,
    /// Node ports, external IPs, load-balancer IPs (and so `externalTrafficPolicy`).
    pub external_frontends: bool,
}

impl Capabilities {
    /// Everything the suite tests.
    pub const ALL: Self = Self {
        reject: true,
        session_affinity: true,
        masquerade: true,
        external_frontends: true,
    };
}

/// How a backend is built and inspected by the suite.
pub struct Harness {
    /// What the backend supports.
    pub caps: Capabilities,
    /// Builds the backend so it programs the given (node) namespace.
    pub make: fn(&NetNs, &ProxyConfig) -> Box<dyn Backend>,
    /// Lists what of the backend is installed in the namespace (rules, chains, tables, maps),
    /// one item per line; empty after cleanup.
    pub leftovers: fn(&NetNs) -> Vec<String>,
}

/// Expands to one `#[test]` per conformance case, calling it with `$harness`.
/// (Needs `#[macro_use] mod conformance;`.)
macro_rules! conformance_suite {
    ($harness:expr) => {
        conformance_suite!(@cases $harness;
            tcp_cluster_ip_balances_and_keeps_client_ip,
            udp_cluster_ip_answers,
            removed_endpoint_gets_no_new_connections,
            service_without_endpoints_rejects_at_once,
            session_affinity_sticks,
            hairpin_is_masqueraded,
            external_client_to_cluster_ip_is_masqueraded,
            node_port_external_ip_and_lb_ip_with_cluster_policy,
            external_policy_local_keeps_source_and_stays_local,
            internal_policy_local_uses_local_endpoints,
            resync_is_noop_and_keeps_established_connections,
            restart_removes_stale_services,
            cleanup_removes_everything,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::cases::$case(&$harness);
            }
        )*
    };
}

/// A Service `default/<name>` with an `http` (TCP 80 → `web`) and a `dns` (UDP 53 → 5353)
/// port; `extra` is merged into its spec.
pub fn service(name: &str, vip: &str, extra: Value) -> Value {
    let mut spec = json!({
        "clusterIP": vip,
        "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}
        ]
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({"metadata": {"namespace": "default", "name": name}, "spec": spec})
}

/// An EndpointSlice of `default/<service>` with the given pods (index, node name) as ready
/// endpoints, resolving `http` to the pods' TCP port and `dns` to their UDP port.
pub fn slice(service: &str, pods: &[(usize, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(i, node)| {
            json!({"addresses": [topology::pod_ip(*i)], "conditions": {"ready": true}, "nodeName": node})
        })
        .collect();
    json!({
        "metadata": {"namespace": "default", "name": format!("{service}-1"),
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": topology::TCP_PORT, "protocol": "TCP"},
            {"name": "dns", "port": topology::UDP_PORT, "protocol": "UDP"}
        ],
        "endpoints": endpoints
    })
}

/// Builds the table from JSON Services and EndpointSlices, as the proxy will from the API.
pub fn table(cfg: &ProxyConfig, services: &[Value], slices: &[Value]) -> ServiceTable {
    let services: Vec<Service> = services
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    ServiceTable::build(&services, &slices, cfg)
}

/// The Kubernetes objects of JSON Services and EndpointSlices, as the sync loop gets them.
pub fn objects(services: &[Value], slices: &[Value]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let services = services
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    let slices = slices
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    (services, slices)
}
