//! Masquerading and external frontends under `BPF_PROG_TEST_RUN`: hairpin, off-cluster
//! clients, `externalTrafficPolicy` Cluster (masquerade everyone) and Local (a second entry for
//! off-cluster clients that keeps their address), and the replies of each. Needs root.
//!
//! Masqueraded packets leave through `bpf_redirect_neigh` when the FIB knows a way (verdict
//! `TC_ACT_REDIRECT`), else with `TC_ACT_OK`; under test-run either is the packet's exit, so
//! the tests accept both and check the rewritten bytes.

mod common;

use common::{assert_checksums, packet, parse, Parsed};
use netlet_ebpf::loader::verdict::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use netlet_ebpf::maps::{flags, CtKey};
use netlet_ebpf::{Config, Direction, Proto, ServiceNat, SvcKey};
use std::net::Ipv4Addr;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const SNAT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const EXT2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 3);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 11), 8080);
const B2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 12), 8080);
const LOCAL: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 13), 8080);

/// The datapath with the node's masquerade address and cluster CIDR configured.
fn load() -> ServiceNat {
    integration::require_root();
    let mut nat = ServiceNat::load().expect("loading the service NAT object");
    let cfg = Config::new(Some(SNAT_IP), &[(Ipv4Addr::new(10, 244, 0, 0), 16)]).unwrap();
    nat.set_config(&cfg).unwrap();
    assert_eq!(nat.config().unwrap(), cfg);
    nat
}

/// Runs `dir` on a TCP segment `src -> dst`; returns the verdict and the parsed output.
fn run(
    nat: &ServiceNat,
    dir: Direction,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
) -> (u32, Parsed) {
    let pkt = packet(Proto::Tcp, src.0, src.1, dst.0, dst.1, b"data", false);
    let out = nat.test_run(dir, &pkt, 1).expect("test run");
    if out.verdict != TC_ACT_SHOT {
        assert_checksums(&out.packet, false);
    }
    (out.verdict, parse(&out.packet))
}

fn sent_on(verdict: u32) -> bool {
    verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT
}

fn ends(p: &Parsed) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    ((p.src, p.sport), (p.dst, p.dport))
}

#[test]
fn hairpin_is_masqueraded_and_its_reply_translated_back() {
    let mut nat = load();
    nat.set_service(VIP, 80, Proto::Tcp, &[(POD, 8080)])
        .unwrap();
    let (v, p) = run(&nat, Direction::Forward, (POD, 40000), (VIP, 80));
    assert!(sent_on(v), "verdict {v}");
    assert_eq!(ends(&p), ((SNAT_IP, 40000), (POD, 8080)));
    let key = CtKey::new(SNAT_IP, 40000, POD, 8080, Proto::Tcp);
    let s = nat.snat_get(&key).unwrap().expect("snat entry");
    assert_eq!((s.client(), s.frontend()), ((POD, 40000), (VIP, 80)));

    // The pod answers the masquerade address; it enters through the forward program too.
    let (v, p) = run(&nat, Direction::Forward, (POD, 8080), (SNAT_IP, 40000));
    assert!(sent_on(v), "verdict {v}");
    assert_eq!(ends(&p), ((VIP, 80), (POD, 40000)));

    // A second packet of the flow keeps its translation.
    let (_, p) = run(&nat, Direction::Forward, (POD, 40000), (VIP, 80));
    assert_eq!(ends(&p), ((SNAT_IP, 40000), (POD, 8080)));
}

#[test]
fn pods_keep_their_address_and_off_cluster_clients_are_masqueraded() {
    let mut nat = load();
    nat.set_service(VIP, 80, Proto::Tcp, &[B1]).unwrap();
    let (v, p) = run(&nat, Direction::Forward, (POD, 40000), (VIP, 80));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(ends(&p), ((POD, 40000), B1));

    let (v, p) = run(&nat, Direction::Forward, (EXT, 40000), (VIP, 80));
    assert!(sent_on(v), "verdict {v}");
    assert_eq!(ends(&p), ((SNAT_IP, 40000), B1));
    // A second off-cluster client on the same source port gets another port.
    let (_, p2) = run(&nat, Direction::Forward, (EXT2, 40000), (VIP, 80));
    assert_eq!((p2.src, p2.dst, p2.dport), (SNAT_IP, B1.0, B1.1));
    assert_ne!(p2.sport, 40000, "port already held by the first client");
    for (client, port) in [(EXT, 40000), (EXT2, p2.sport)] {
        let (v, back) = run(&nat, Direction::Forward, B1, (SNAT_IP, port));
        assert!(sent_on(v), "verdict {v}");
        assert_eq!(ends(&back), ((VIP, 80), (client, 40000)));
    }
    // A packet to the masquerade address that belongs to no connection passes untouched.
    let (v, p) = run(&nat, Direction::Forward, B2, (SNAT_IP, 1234));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(ends(&p), (B2, (SNAT_IP, 1234)));
}

#[test]
fn external_frontend_with_cluster_policy_masquerades_pods_too() {
    let mut nat = load();
    let key = SvcKey::new(NODE_IP, 30080, Proto::Tcp);
    nat.set_frontend(key, flags::MASQ_ALL, &[B1], None).unwrap();
    for (client, port) in [(POD, 41000), (EXT, 41001)] {
        let (v, p) = run(&nat, Direction::Forward, (client, port), (NODE_IP, 30080));
        assert!(sent_on(v), "verdict {v}");
        assert_eq!(ends(&p), ((SNAT_IP, port), B1), "client {client}");
        let (_, back) = run(&nat, Direction::Forward, B1, (SNAT_IP, port));
        assert_eq!(ends(&back), ((NODE_IP, 30080), (client, port)));
    }
}

#[test]
fn local_policy_serves_off_cluster_clients_from_local_endpoints_keeping_their_address() {
    let mut nat = load();
    let key = SvcKey::new(NODE_IP, 30080, Proto::Tcp);
    nat.set_frontend(key, flags::OFF_CLUSTER_VARIANT, &[B1, B2], None)
        .unwrap();
    nat.set_frontend(key.off_cluster(), flags::KEEP_SOURCE, &[LOCAL], None)
        .unwrap();
    for sport in 42000..42020 {
        let (v, p) = run(&nat, Direction::Forward, (EXT, sport), (NODE_IP, 30080));
        assert_eq!(v, TC_ACT_OK);
        assert_eq!(ends(&p), ((EXT, sport), LOCAL));
        // The reply leaves by the uplink, whose egress runs the reverse program.
        let (v, back) = run(&nat, Direction::Reverse, LOCAL, (EXT, sport));
        assert_eq!(v, TC_ACT_OK);
        assert_eq!(ends(&back), ((NODE_IP, 30080), (EXT, sport)));
    }
    // Pods use every endpoint, unmasqueraded.
    for sport in 43000..43030 {
        let (v, p) = run(&nat, Direction::Forward, (POD, sport), (NODE_IP, 30080));
        assert_eq!(v, TC_ACT_OK);
        assert_eq!(p.src, POD);
        assert!([B1, B2].contains(&(p.dst, p.dport)), "{p:?}");
    }
    // Without local endpoints off-cluster clients are rejected, pods still served.
    nat.set_frontend(key.off_cluster(), flags::KEEP_SOURCE, &[], None)
        .unwrap();
    let (v, _) = run(&nat, Direction::Forward, (EXT, 44000), (NODE_IP, 30080));
    assert_eq!(v, TC_ACT_REDIRECT, "a reset back to the client");
    let (v, _) = run(&nat, Direction::Forward, (POD, 44000), (NODE_IP, 30080));
    assert_eq!(v, TC_ACT_OK);
}

#[test]
fn without_a_masquerade_address_masqueraded_traffic_is_dropped() {
    integration::require_root();
    let mut nat = ServiceNat::load().expect("loading the service NAT object");
    let cfg = Config::new(None, &[(Ipv4Addr::new(10, 244, 0, 0), 16)]).unwrap();
    nat.set_config(&cfg).unwrap();
    nat.set_service(VIP, 80, Proto::Tcp, &[B1]).unwrap();
    let (v, _) = run(&nat, Direction::Forward, (EXT, 40000), (VIP, 80));
    assert_eq!(v, TC_ACT_SHOT);
    let (v, p) = run(&nat, Direction::Forward, (POD, 40000), (VIP, 80));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(ends(&p), ((POD, 40000), B1));
}
