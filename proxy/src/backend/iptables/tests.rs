//! Reconcile logic of the iptables backend against the in-memory fake: first sync, no-op
//! resync, restart, partial sync, repair, failure and cleanup, all without root.

use super::fake::FakeIptables;
use super::*;
use crate::model::{Endpoint, Protocol, ServicePort, TrafficPolicy};

fn port(name: &str, vip: &str, eps: &[&str]) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            service: ServiceKey::new("default", name),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        cluster_ips: vec![vip.parse().unwrap()],
        port: 80,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_timeout: None,
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        endpoints: eps
            .iter()
            .map(|ip| Endpoint {
                ip: ip.parse().unwrap(),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
                zone: None,
                local: false,
            })
            .collect(),
    }
}

fn cfg() -> ProxyConfig {
    ProxyConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..ProxyConfig::new("node-a")
    }
}

fn backend(fake: &FakeIptables) -> IptablesBackend {
    IptablesBackend::with_cli(cfg(), Box::new(fake.clone()))
}

fn two_services() -> ServiceTable {
    ServiceTable::from_ports([
        port("a", "10.96.0.10", &["10.244.1.2", "10.244.1.3"]),
        port("b", "10.96.0.11", &["10.244.1.4"]),
    ])
}

/// The saved IPv4 lines starting with `prefix`.
fn saved_lines(fake: &FakeIptables, prefix: &str) -> Vec<String> {
    fake.save(IpFamily::V4)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(String::from)
        .collect()
}

fn netlet_chains(fake: &FakeIptables) -> Vec<String> {
    saved_lines(fake, ":NETLET-")
}

#[test]
fn first_sync_installs_all_then_same_table_is_a_noop() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    let s = b.sync(&two_services()).unwrap();
    assert_eq!(s.transactions, 1);
    assert_eq!(s.hooks_changed, render::hooks().len());
    assert_eq!(s.service_ports, 2);
    let pre = fake.chain(IpFamily::V4, "nat", "PREROUTING").unwrap();
    assert_eq!(
        pre,
        ["-m comment --comment \"netlet service portals\" -j NETLET-SERVICES"]
    );
    let again = b.sync(&two_services()).unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(fake.restores().len(), 1);
}

#[test]
fn restart_rewrites_desired_chains_and_deletes_stale_ones_without_touching_hooks() {
    let fake = FakeIptables::default();
    backend(&fake).sync(&two_services()).unwrap();
    let only_a = ServiceTable::from_ports([port("a", "10.96.0.10", &["10.244.1.2", "10.244.1.3"])]);
    let mut restarted = backend(&fake);
    let s = restarted.sync(&only_a).unwrap();
    assert_eq!(s.hooks_changed, 0, "{s:?}");
    // b's service chain and its one endpoint chain.
    assert_eq!(s.chains_deleted, 2, "{s:?}");
    let tx = fake.restores().pop().unwrap();
    assert!(!tx.contains("10.96.0.11"), "{tx}");
    assert!(restarted.sync(&only_a).unwrap().is_noop());
    // Whatever the path, the kernel ends up as a fresh install would leave it.
    let fresh = FakeIptables::default();
    backend(&fresh).sync(&only_a).unwrap();
    assert_eq!(
        fake.save(IpFamily::V4).unwrap(),
        fresh.save(IpFamily::V4).unwrap()
    );
}

#[test]
fn partial_sync_writes_only_the_changed_service() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    b.sync(&two_services()).unwrap();
    let changed = ServiceTable::from_ports([
        port("a", "10.96.0.10", &["10.244.1.2"]),
        port("b", "10.96.0.11", &["10.244.1.4"]),
    ]);
    let a = ServiceKey::new("default", "a");
    let s = b.sync_changed(&changed, std::slice::from_ref(&a)).unwrap();
    // a's SVC chain rewritten, the endpoint chain of 10.244.1.3 deleted; dispatch unchanged.
    assert_eq!((s.chains_written, s.chains_deleted), (1, 1), "{s:?}");
    let tx = fake.restores().pop().unwrap();
    assert!(!tx.contains("default/b"), "{tx}");
    assert!(!tx.contains("-A NETLET-SERVICES"), "{tx}");

    let without_b = ServiceTable::from_ports([port("a", "10.96.0.10", &["10.244.1.2"])]);
    let s = b
        .sync_changed(&without_b, &[ServiceKey::new("default", "b")])
        .unwrap();
    assert_eq!(s.chains_deleted, 2, "{s:?}");
    let tx = fake.restores().pop().unwrap();
    assert!(
        tx.contains(":NETLET-SERVICES - [0:0]"),
        "dispatch rewritten: {tx}"
    );
    let fresh = FakeIptables::default();
    backend(&fresh).sync(&without_b).unwrap();
    assert_eq!(netlet_chains(&fake), netlet_chains(&fresh));
}

#[test]
fn full_sync_repairs_flushed_chains_and_hooks() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    b.sync(&two_services()).unwrap();
    let hook = "-m comment --comment \"netlet service portals\" -j NETLET-SERVICES";
    fake.tamper(
        IpFamily::V4,
        &format!(
            "*nat\n:NETLET-SERVICES - [0:0]\n-D OUTPUT {hook}\n-I PREROUTING 1 {hook}\nCOMMIT\n"
        ),
    );
    let s = b.sync(&two_services()).unwrap();
    assert_eq!(s.chains_written, 1, "{s:?}");
    // OUTPUT's hook back, PREROUTING's duplicate gone.
    assert_eq!(s.hooks_changed, 2, "{s:?}");
    assert_eq!(fake.chain(IpFamily::V4, "nat", "OUTPUT").unwrap(), [hook]);
    assert_eq!(
        fake.chain(IpFamily::V4, "nat", "PREROUTING").unwrap(),
        [hook]
    );
    assert!(b.sync(&two_services()).unwrap().is_noop());
}

#[test]
fn failed_apply_makes_the_next_partial_sync_a_full_one() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    b.sync(&two_services()).unwrap();
    let one = ServiceTable::from_ports([port("a", "10.96.0.10", &["10.244.1.2"])]);
    let keys = [
        ServiceKey::new("default", "a"),
        ServiceKey::new("default", "b"),
    ];
    fake.fail_next_restore();
    assert!(b.sync_changed(&one, &keys).is_err());
    let s = b.sync_changed(&one, &keys[..1]).unwrap();
    // Full sync: every desired chain rewritten (nothing can be vouched for), b removed.
    assert!(s.chains_written >= 8, "{s:?}");
    assert_eq!(s.chains_deleted, 3, "{s:?}");
    assert!(b.sync(&one).unwrap().is_noop());
}

#[test]
fn cleanup_removes_every_chain_and_hook() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    b.sync(&two_services()).unwrap();
    let s = b.cleanup().unwrap();
    assert_eq!(s.hooks_changed, render::hooks().len());
    assert!(!fake.save(IpFamily::V4).unwrap().contains("NETLET"));
    assert!(b.cleanup().unwrap().is_noop());
}

#[test]
fn partial_syncs_end_where_a_fresh_full_sync_would() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    b.sync(&two_services()).unwrap();
    let key = |n: &str| ServiceKey::new("default", n);
    // Each step: the table after it, and the Services it changed.
    let steps: Vec<(ServiceTable, Vec<ServiceKey>)> = vec![
        // An endpoint moves: own chains only.
        (
            ServiceTable::from_ports([
                port("a", "10.96.0.10", &["10.244.1.2", "10.244.1.9"]),
                port("b", "10.96.0.11", &["10.244.1.4"]),
            ]),
            vec![key("a")],
        ),
        // A Service appears and another loses every endpoint: shared chains change.
        (
            ServiceTable::from_ports([
                port("a", "10.96.0.10", &["10.244.1.2", "10.244.1.9"]),
                port("b", "10.96.0.11", &[]),
                port("c", "10.96.0.12", &["10.244.2.2"]),
            ]),
            vec![key("b"), key("c")],
        ),
        // Endpoints come back and a Service goes.
        (
            ServiceTable::from_ports([
                port("b", "10.96.0.11", &["10.244.1.5"]),
                port("c", "10.96.0.12", &["10.244.2.2"]),
            ]),
            vec![key("a"), key("b")],
        ),
    ];
    for (i, (table, keys)) in steps.iter().enumerate() {
        b.sync_changed(table, keys).unwrap();
        let fresh = FakeIptables::default();
        backend(&fresh).sync(table).unwrap();
        assert_eq!(netlet_chains(&fake), netlet_chains(&fresh), "step {i}");
        assert_eq!(
            fake.save(IpFamily::V4).unwrap(),
            fresh.save(IpFamily::V4).unwrap(),
            "step {i}"
        );
    }
    // After the partial syncs the backend still vouches for exactly what is installed.
    let s = b.sync(&steps[2].0).unwrap();
    assert_eq!(s.transactions, 0, "{s:?}");
}

#[test]
fn a_large_cluster_drops_per_endpoint_comments_everywhere_even_through_a_partial_sync() {
    let fake = FakeIptables::default();
    let mut b = backend(&fake);
    b.sync(&two_services()).unwrap();
    let sep_rules = |fake: &FakeIptables| saved_lines(fake, "-A NETLET-SEP-");
    assert!(sep_rules(&fake).iter().all(|r| r.contains("--comment")));

    // 2 + 200 Services × 5 endpoints: past the 1,000-endpoint threshold.
    let names: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
    let eps: Vec<Vec<String>> = (0..200)
        .map(|i| {
            (0..5)
                .map(|e| format!("10.244.{}.{}", 10 + i / 50, (i % 50) * 5 + e))
                .collect()
        })
        .collect();
    let mut ports: Vec<ServicePort> = two_services().ports().cloned().collect();
    for (i, name) in names.iter().enumerate() {
        let eps: Vec<&str> = eps[i].iter().map(String::as_str).collect();
        ports.push(port(name, &format!("10.96.1.{i}"), &eps));
    }
    let large = ServiceTable::from_ports(ports);
    let keys: Vec<ServiceKey> = names
        .iter()
        .map(|n| ServiceKey::new("default", n))
        .collect();
    b.sync_changed(&large, &keys).unwrap();
    let rules = sep_rules(&fake);
    assert_eq!(rules.len(), 2 * 1003);
    assert!(
        rules.iter().all(|r| !r.contains("--comment")),
        "{:?}",
        &rules[..2]
    );
    let fresh = FakeIptables::default();
    backend(&fresh).sync(&large).unwrap();
    assert_eq!(
        fake.save(IpFamily::V4).unwrap(),
        fresh.save(IpFamily::V4).unwrap()
    );
    // The cluster IP dispatch keeps its comments: they name the Service in `iptables -L`.
    assert!(fake
        .save(IpFamily::V4)
        .unwrap()
        .contains("\"default/s7:http cluster IP\""));
}
