//! The nftables backend against the real kernel, in throwaway namespaces: every golden
//! fixture installs, reads back as desired and lists with `nft` (which must be able to print
//! every rule we write), and a scale smoke test of 1,000 services × 5 endpoints (10,000 with
//! `NETLET_SCALE=10000`) checks one-batch programming and a one-endpoint update. Timings are
//! printed (`--nocapture`), never asserted.

mod fixtures;

use integration::NetNs;
use netlet_proxy::backend::nftables::base::{set, Family, ELEMENT_SETS};
use netlet_proxy::backend::nftables::netlink::NftSocket;
use netlet_proxy::backend::nftables::{apply, capacity, render_elements};
use netlet_proxy::backend::NftablesBackend;
use netlet_proxy::model::{
    Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, TrafficPolicy,
};
use netlet_proxy::{
    new_backend, Backend, BackendConfig, BackendKind, NetnsExec, ProxyConfig, ServiceKey,
    ServiceTable,
};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

fn netns(ns: &NetNs) -> NetnsExec {
    NetnsExec::Named(ns.name().to_string())
}

fn list(ns: &NetNs, family: &str) -> String {
    ns.run_ok("nft", &["list", "table", family, "netlet"])
}

#[test]
fn fixtures_install_list_resync_and_clean_up() {
    for case in fixtures::cases() {
        let ns = NetNs::new("nftfix");
        let table = case.table();
        let mut backend = NftablesBackend::new(case.cfg.clone(), &netns(&ns)).unwrap();
        let stats = backend.sync(&table).expect("sync");
        assert_eq!(stats.transactions, case.cfg.families.len(), "{stats:?}");
        for family in &case.cfg.families {
            let nft_family = match family {
                IpFamily::V4 => "ip",
                IpFamily::V6 => "ip6",
            };
            let listed = list(&ns, nft_family);
            for p in table.for_family(*family).ports() {
                assert!(
                    listed.contains(&format!("comment \"{}\"", p.name)),
                    "{}: {} missing in\n{listed}",
                    case.path.display(),
                    p.name
                );
            }
            // What the kernel holds is exactly what render says.
            let mut sock = NftSocket::open(&netns(&ns)).unwrap();
            let f = match family {
                IpFamily::V4 => Family::V4,
                IpFamily::V6 => Family::V6,
            };
            let have = apply::read_installed(&mut sock, f, &ELEMENT_SETS)
                .unwrap()
                .unwrap();
            let rendered = render_elements(&table, &case.cfg, *family);
            let elements: usize = rendered
                .lines()
                .filter(|l| l.starts_with("  "))
                .map(|l| match l.rsplit_once(" x") {
                    Some((_, n)) => n.split(' ').next().unwrap().parse().unwrap_or(1),
                    None => 1,
                })
                .sum();
            assert_eq!(have.len(), elements, "{}:\n{rendered}", case.path.display());
        }
        assert!(backend.sync(&table).unwrap().is_noop());
        assert!(!backend.cleanup().unwrap().is_noop());
        assert!(!ns.run_ok("nft", &["list", "tables"]).contains("netlet"));
    }
}

#[test]
fn factory_builds_the_backend_in_the_configured_namespace() {
    let ns = NetNs::new("nftfact");
    let cfg = BackendConfig {
        kind: BackendKind::Nftables,
        netns: netns(&ns),
        ..Default::default()
    };
    let mut backend = new_backend(&cfg, &ProxyConfig::new("n")).expect("nftables backend");
    assert_eq!(backend.name(), "nftables");
    backend.sync(&ServiceTable::default()).expect("sync");
    assert!(ns
        .run_ok("nft", &["list", "tables"])
        .contains("table ip netlet"));
    assert!(!backend.cleanup().unwrap().is_noop());
}

fn endpoint(ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(ip),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some("node-b".into()),
        zone: None,
        local: false,
    }
}

/// Service `i`: cluster IP 10.96.x.y, endpoints 10.(100 + i/10000).x.y + 1…5.
fn scale_port(i: u32) -> ServicePort {
    let [_, _, a, b] = i.to_be_bytes();
    let net = 100 + (i / 65_536) as u8;
    ServicePort {
        name: ServicePortName {
            service: ServiceKey::new("scale", format!("svc-{i}")),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, a, b))],
        port: 80,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_timeout: None,
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        endpoints: (1..=5)
            .map(|e| endpoint(Ipv4Addr::new(net, a, b, e * 10)))
            .collect(),
    }
}

fn endpoints_of(sock: &mut NftSocket, vip: Ipv4Addr) -> Vec<Ipv4Addr> {
    let elems = apply::read_set(sock, Family::V4, set::SERVICE_ENDPOINTS)
        .unwrap()
        .unwrap();
    let mut eps: Vec<Ipv4Addr> = elems
        .iter()
        .filter(|(key, _)| key[..4] == vip.octets())
        .map(|(_, enc)| Ipv4Addr::new(enc.data[0], enc.data[1], enc.data[2], enc.data[3]))
        .collect();
    eps.sort();
    eps.dedup();
    eps
}

#[test]
fn scale_smoke_full_sync_then_one_endpoint() {
    let n: u32 = std::env::var("NETLET_SCALE")
        .ok()
        .map(|s| s.parse().expect("NETLET_SCALE is a number"))
        .unwrap_or(1_000);
    let ns = NetNs::new("nftscale");
    let cfg = ProxyConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..ProxyConfig::new("node-a")
    };
    let mut backend = NftablesBackend::new(cfg.clone(), &netns(&ns)).unwrap();
    let mut ports: Vec<ServicePort> = (0..n).map(scale_port).collect();
    let table = ServiceTable::from_ports(ports.clone());

    let start = Instant::now();
    let stats = backend.sync(&table).expect("full sync");
    eprintln!(
        "nftables: full sync of {n} services x 5 endpoints: {:?} ({stats:?})",
        start.elapsed()
    );
    assert_eq!(stats.transactions, 1);
    // Per service: a slot per endpoint, its cluster IP, 5 hairpin pairs.
    assert_eq!(stats.chains_written, n as usize * (5 + 1 + 5));

    let start = Instant::now();
    assert!(backend.sync(&table).unwrap().is_noop());
    eprintln!("nftables: resync (nothing to do): {:?}", start.elapsed());

    // Replace one endpoint of one service.
    let i = n / 2;
    let old = ports[i as usize].endpoints[2].ip;
    let new = Ipv4Addr::new(10, 250, 0, 1);
    ports[i as usize].endpoints[2] = endpoint(new);
    let changed = ServiceTable::from_ports(ports);
    let key = ServiceKey::new("scale", format!("svc-{i}"));
    let start = Instant::now();
    let stats = backend
        .sync_changed(&changed, std::slice::from_ref(&key))
        .expect("partial sync");
    eprintln!(
        "nftables: one endpoint changed: {:?} ({stats:?})",
        start.elapsed()
    );
    assert_eq!(stats.transactions, 1);
    assert_eq!(stats.rules_written, 0, "a partial sync never writes rules");
    // The endpoint's slot and its hairpin pair (the modulus stays 5).
    assert_eq!(
        (stats.chains_written, stats.chains_deleted),
        (2, 2),
        "{stats:?}"
    );

    let mut sock = NftSocket::open(&netns(&ns)).unwrap();
    let IpAddr::V4(vip) = changed.ports_of(&key).next().unwrap().cluster_ips[0] else {
        unreachable!()
    };
    let eps = endpoints_of(&mut sock, vip);
    assert_eq!(eps.len(), 5, "{eps:?}");
    assert!(
        eps.contains(&new)
            && !eps.contains(&match old {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!(),
            })
    );
    // The whole kernel state matches a fresh render of the changed table.
    assert!(backend.sync(&changed).unwrap().is_noop());
}

#[test]
fn a_set_outgrowing_its_capacity_is_rebuilt_bigger_by_a_partial_sync() {
    let ns = NetNs::new("nftgrow");
    let cfg = ProxyConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..ProxyConfig::new("node-a")
    };
    let mut backend = NftablesBackend::new(cfg, &netns(&ns)).unwrap();
    let few = ServiceTable::from_ports((0..2).map(scale_port));
    backend.sync(&few).expect("full sync");
    let size = |ns: &NetNs| {
        let out = ns.run_ok(
            "nft",
            &["list", "map", "ip", "netlet", set::SERVICE_ENDPOINTS],
        );
        out.lines()
            .find_map(|l| l.trim().strip_prefix("size "))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no size in\n{out}"))
    };
    assert_eq!(size(&ns), capacity::MIN.to_string());

    // 300 Services × 5 endpoints in one partial sync: 1,500 endpoint slots > 1,024.
    let many = ServiceTable::from_ports((0..300).map(scale_port));
    let keys: Vec<ServiceKey> = (2..300)
        .map(|i| ServiceKey::new("scale", format!("svc-{i}")))
        .collect();
    let stats = backend.sync_changed(&many, &keys).expect("partial sync");
    assert!(stats.rules_written > 0, "the table was rebuilt: {stats:?}");
    assert_eq!(size(&ns), "3000");
    let mut sock = NftSocket::open(&netns(&ns)).unwrap();
    let slots = apply::read_set(&mut sock, Family::V4, set::SERVICE_ENDPOINTS)
        .unwrap()
        .unwrap();
    assert_eq!(slots.len(), 1_500);
    assert!(backend.sync(&many).unwrap().is_noop());
    // Within the new capacity a partial sync only writes elements again.
    let fewer = ServiceTable::from_ports((0..299).map(scale_port));
    let stats = backend
        .sync_changed(&fewer, &[ServiceKey::new("scale", "svc-299")])
        .unwrap();
    assert_eq!(stats.rules_written, 0, "{stats:?}");
}
