//! Real traffic through the eBPF backend: the conformance suite, each case in its own
//! namespaces (see `conformance/topology.rs`). Needs root and clang-19 (the programs are built
//! by netlet-ebpf's build.rs); never touches the host namespace.
//!
//! Each test's pinned maps live in a private bpffs under
//! `$TMPDIR/netlet-ebpf-conformance/<node namespace>`; the namespace is gone after the test but
//! a mount cannot be tied to it, so every `make` first unmounts the bpffs of namespaces that no
//! longer exist (the last tests' mounts go at the next run).

#[macro_use]
mod conformance;

use conformance::{Capabilities, Harness};
use integration::NetNs;
use netlet_proxy::backend::{EbpfBackend, EbpfOptions};
use netlet_proxy::{Backend, NetnsExec, ProxyConfig};
use std::path::PathBuf;

fn base() -> PathBuf {
    std::env::temp_dir().join("netlet-ebpf-conformance")
}

fn state_dir(ns: &NetNs) -> PathBuf {
    base().join(ns.name())
}

/// Unmounts and removes the state dirs of namespaces that are gone.
fn sweep() {
    let Ok(dirs) = std::fs::read_dir(base()) else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name();
        if std::path::Path::new("/run/netns").join(&name).exists() {
            continue;
        }
        let _ = netlet_ebpf::bpffs::unmount_under(&d.path());
        let _ = std::fs::remove_dir_all(d.path());
    }
}

fn make(ns: &NetNs, cfg: &ProxyConfig) -> Box<dyn Backend> {
    sweep();
    let opts = EbpfOptions {
        state_dir: state_dir(ns),
        // The node ends of the pod veths and of the client pod's link, and the uplink (vx0).
        interfaces: vec!["vp*".to_string(), "vc0".to_string(), "vx0".to_string()],
        // Found on the pod bridge (br0) inside the cluster CIDR.
        masquerade_ip: None,
    };
    let netns = NetnsExec::Named(ns.name().to_string());
    Box::new(EbpfBackend::new(cfg.clone(), netns, opts).expect("ebpf backend"))
}

/// Our tc filters (`tc filter show` lines naming them), pinned maps and programmed services.
fn leftovers(ns: &NetNs) -> Vec<String> {
    let mut out = Vec::new();
    let links = ns.run_ok("ip", &["-o", "link", "show"]);
    for link in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        let link = link.split('@').next().unwrap_or(link);
        for hook in ["ingress", "egress"] {
            let filters = ns.run_ok("tc", &["filter", "show", "dev", link, hook]);
            out.extend(
                filters
                    .lines()
                    .filter(|l| l.contains("svc_nat_"))
                    .map(|l| format!("{link} {hook}: {l}")),
            );
        }
    }
    let dir = state_dir(ns);
    if let Ok(pins) = std::fs::read_dir(dir.join("bpffs")) {
        out.extend(pins.flatten().map(|p| format!("pin {:?}", p.file_name())));
    }
    if let Ok(names) = std::fs::read_to_string(dir.join(netlet_proxy::backend::ebpf::NAMES_FILE)) {
        out.extend(names.lines().map(|l| format!("service {l}")));
    }
    out
}

fn harness() -> Harness {
    Harness {
        caps: Capabilities::ALL,
        make,
        leftovers,
    }
}

conformance_suite!(harness());

/// eBPF-specific: a new backend object (as after a proxy restart) re-adopts the pinned maps:
/// its first sync of the same table rewrites no service entry, only replaces the programs in
/// place, and a connection established before keeps working (its conntrack entry survived).
#[test]
fn restart_readopts_pinned_maps_and_keeps_flows() {
    use conformance::topology::{in_ns, tcp_connect, tcp_hellos, Topology, NODE};
    use conformance::{service, slice, table};
    use std::collections::BTreeSet;

    let topo = Topology::new();
    let cfg = topo.config();
    let web = service("web", "10.96.0.10", serde_json::json!({}));
    let t = table(
        &cfg,
        &[web],
        &[slice("web", &[(0, NODE), (1, NODE), (2, "node-b")])],
    );
    let vip = "10.96.0.10:80".parse().unwrap();
    let mut first = make(&topo.node, &cfg);
    let stats = first.sync(&t).expect("first sync");
    assert_eq!(stats.chains_written, 2, "http and dns entries: {stats:?}");
    let mut conn = in_ns(&topo.client, || tcp_connect(vip)).expect("connect");
    drop(first);

    let mut second = make(&topo.node, &cfg);
    let stats = second.sync(&t).expect("sync after restart");
    assert_eq!(
        (stats.chains_written, stats.chains_deleted),
        (0, 0),
        "maps re-adopted as they were: {stats:?}"
    );
    assert_eq!(
        stats.hooks_changed, 5,
        "programs replaced on vp0-2, vc0 and vx0: {stats:?}"
    );
    conn.echo("after restart")
        .expect("established flow survives the restart");
    let hellos = tcp_hellos(&topo.client, vip, 30);
    let pods: BTreeSet<_> = hellos.iter().map(|h| h.pod.as_str()).collect();
    assert_eq!(pods.len(), 3, "{hellos:?}");
    assert!(second.sync(&t).expect("again").is_noop());
}

/// eBPF-specific: a pod whose veth appears after the backend synced (and that causes no sync,
/// being only a client) gets service NAT: the link watch attaches to it.
#[test]
fn pod_veth_created_after_sync_gets_service_nat() {
    use conformance::topology::{in_ns, tcp_connect, Topology, CLIENT_TIMEOUT, NODE};
    use conformance::{service, slice, table};
    use integration::netns::veth_between;
    use std::time::Instant;

    let topo = Topology::new();
    let cfg = topo.config();
    let t = table(
        &cfg,
        &[service("web", "10.96.0.10", serde_json::json!({}))],
        &[slice("web", &[(0, NODE), (1, NODE), (2, "node-b")])],
    );
    let mut backend = make(&topo.node, &cfg);
    backend.sync(&t).expect("sync");

    // A new pod on the bridge, on a veth matching `vp*`, created after the sync.
    let late = NetNs::new("late");
    veth_between(&topo.node, "vp9", &late, "eth0");
    topo.node
        .run_ok("ip", &["link", "set", "vp9", "master", "br0"]);
    late.run_ok("ip", &["addr", "add", "10.244.1.50/24", "dev", "eth0"]);
    late.run_ok("ip", &["route", "add", "default", "via", "10.244.1.1"]);

    // The attach is asynchronous: try connections (each bounded by CLIENT_TIMEOUT; an
    // untranslated SYN goes to the node's default route and is never answered) until one
    // goes through, within a deadline.
    let vip = "10.96.0.10:80".parse().unwrap();
    let deadline = Instant::now() + 4 * CLIENT_TIMEOUT;
    let hello = loop {
        match in_ns(&late, || tcp_connect(vip)) {
            Ok(conn) => break conn.hello,
            Err(e) if Instant::now() < deadline => eprintln!("not yet translated: {e}"),
            Err(e) => panic!("the late pod never reached the service: {e}"),
        }
    };
    assert_eq!(hello.peer.to_string(), "10.244.1.50", "{hello:?}");
    let filters = topo
        .node
        .run_ok("tc", &["filter", "show", "dev", "vp9", "ingress"]);
    assert!(filters.contains("svc_nat_fwd"), "{filters}");
    // The next sync finds it attached already: nothing to do.
    assert!(backend.sync(&t).expect("resync").is_noop());
}

/// eBPF-specific: a UDP client keeping one source port moves off a removed endpoint with its
/// very next datagram (the datapath re-balances a flow whose slot no longer holds its backend;
/// no conntrack cleanup is involved), is refused at once when the last endpoint goes, and
/// reaches a new one at once. The sync loop's metrics report the maps' sizes.
#[test]
fn udp_flow_moves_off_a_removed_endpoint_without_cleanup() {
    use conformance::conntrack::{ask, sync_pods, udp_client};
    use conformance::service;
    use conformance::topology::{Topology, NODE};
    use netlet_proxy::sync_loop::ProxySyncer;
    use std::io::ErrorKind;

    let topo = Topology::new();
    let cfg = topo.config();
    let svc = service("web", "10.96.0.10", serde_json::json!({}));
    let mut syncer = ProxySyncer::new(make(&topo.node, &cfg), cfg.clone());
    let sync = |syncer: &mut ProxySyncer, pods: &[(usize, &str)]| sync_pods(syncer, &svc, pods);
    sync(&mut syncer, &[(0, NODE)]);
    let metrics = syncer.metrics().render_prometheus();
    for line in [
        "netlet_proxy_map_entries{map=\"services\"} 2",
        "netlet_proxy_map_entries{map=\"backends\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let sock = udp_client(&topo);
    assert_eq!(ask(&sock).expect("first answer"), "pod0");
    sync(&mut syncer, &[(1, NODE)]);
    assert_eq!(ask(&sock).expect("answer after the move"), "pod1");
    sync(&mut syncer, &[]);
    let err = ask(&sock).expect_err("a service without endpoints must not answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    sync(&mut syncer, &[(2, "node-b")]);
    assert_eq!(ask(&sock).expect("answer after the first endpoint"), "pod2");
}
