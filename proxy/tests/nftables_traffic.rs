//! Real traffic through the nftables backend: the conformance suite, each case in its own
//! namespaces (see `conformance/topology.rs`). Needs root; never touches the host namespace.

#[macro_use]
mod conformance;

use conformance::Harness;
use integration::NetNs;
use netlet_proxy::backend::NftablesBackend;
use netlet_proxy::{Backend, NetnsExec, ProxyConfig};

fn make(ns: &NetNs, cfg: &ProxyConfig) -> Box<dyn Backend> {
    let netns = NetnsExec::Named(ns.name().to_string());
    Box::new(NftablesBackend::new(cfg.clone(), &netns).expect("nftables backend"))
}

/// Our tables as `nft list` prints them, one line each; nothing when they do not exist.
fn leftovers(ns: &NetNs) -> Vec<String> {
    let tables = ns.run_ok("nft", &["list", "tables"]);
    let mut out = Vec::new();
    for family in ["ip", "ip6"] {
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {family} netlet"))
        {
            out.extend(
                ns.run_ok("nft", &["list", "table", family, "netlet"])
                    .lines()
                    .map(String::from),
            );
        }
    }
    out
}

fn harness() -> Harness {
    Harness {
        caps: conformance::Capabilities::ALL,
        make,
        leftovers,
    }
}

conformance_suite!(harness());

#[test]
fn udp_flow_moves_off_a_removed_endpoint() {
    conformance::conntrack::udp_flow_moves_off_a_removed_endpoint(&harness());
}

#[test]
fn health_check_node_port_reports_local_endpoints() {
    conformance::health_check::health_check_node_port_reports_local_endpoints(&harness());
}

/// nftables-specific: a client remembered for an endpoint that leaves the Service is balanced
/// anew (the remembered choice is deleted), and sticks again.
#[test]
fn affinity_forgets_a_removed_endpoint() {
    use conformance::topology::{pod_ip, tcp_hellos, Topology, NODE};
    use conformance::{service, slice, table};
    use netlet_proxy::ServiceKey;
    use std::collections::BTreeSet;

    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = make(&topo.node, &cfg);
    let affine = serde_json::json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}});
    let svc = service("web", "10.96.0.10", affine);
    let pods = [(0, NODE), (1, NODE), (2, "node-b")];
    let t = table(&cfg, std::slice::from_ref(&svc), &[slice("web", &pods)]);
    backend.sync(&t).expect("sync");
    let vip = "10.96.0.10:80".parse().unwrap();
    let first = tcp_hellos(&topo.client, vip, 5);
    let stuck: BTreeSet<_> = first.iter().map(|h| h.pod.clone()).collect();
    assert_eq!(stuck.len(), 1, "{first:?}");
    let gone: usize = stuck.first().unwrap()[3..].parse().unwrap();
    let rest: Vec<_> = pods.iter().copied().filter(|(i, _)| *i != gone).collect();
    let t = table(&cfg, &[svc], &[slice("web", &rest)]);
    backend
        .sync_changed(&t, &[ServiceKey::new("default", "web")])
        .expect("partial sync");
    let after = tcp_hellos(&topo.client, vip, 5);
    let now: BTreeSet<_> = after.iter().map(|h| h.pod.clone()).collect();
    assert_eq!(now.len(), 1, "{after:?}");
    assert!(
        !now.contains(&format!("pod{gone}")),
        "{after:?} ({})",
        pod_ip(gone)
    );
}
