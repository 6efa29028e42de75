//! UDP conntrack cleanup through the sync loop ([`ProxySyncer`] with the ctnetlink table of
//! the node namespace), for the backends that NAT through conntrack (iptables, nftables).
//!
//! A UDP client that keeps one source port keeps one conntrack entry, so its datagrams keep
//! the NAT the first one got; only deleting the entry moves the flow.

use super::topology::*;
use super::{objects, service, slice, table, Harness};
use netlet_proxy::conntrack::{self, NetlinkConntrack};
use netlet_proxy::sync_loop::ProxySyncer;
use netlet_proxy::watch::Change;
use netlet_proxy::NetnsExec;
use serde_json::json;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};

const VIP: &str = "10.96.0.10";

/// A full sync through the sync loop of Service `svc` (named `web`) with `pods` as endpoints.
pub fn sync_pods(syncer: &mut ProxySyncer, svc: &serde_json::Value, pods: &[(usize, &str)]) {
    let (svcs, slices) = objects(std::slice::from_ref(svc), &[slice("web", pods)]);
    syncer
        .apply(&svcs, &slices, &Change::Resync)
        .expect("sync loop apply");
}

/// The client pod's long-lived UDP socket, connected to the Service's `dns` port (UDP 53).
pub fn udp_client(topo: &Topology) -> UdpSocket {
    let vip: SocketAddr = format!("{VIP}:53").parse().unwrap();
    in_ns(&topo.client, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(vip).expect("connect");
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s
    })
}

/// One datagram on the client's long-lived socket: who answered, or the error.
pub fn ask(sock: &UdpSocket) -> std::io::Result<String> {
    sock.send(b"hi")?;
    let mut buf = [0; 512];
    let n = sock.recv(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    Ok(text.split(' ').next().unwrap_or_default().to_string())
}

/// An endpoint leaving a UDP Service: without cleanup the client's flow sticks to it; after
/// the cleanup the next datagram reaches the new endpoint. Then, through the sync loop, the
/// flow moves again, the Service loses its last endpoint (the client is refused at once) and
/// gains one again (reached at once).
pub fn udp_flow_moves_off_a_removed_endpoint(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let svc = service("web", VIP, json!({}));
    let netns = NetnsExec::Named(topo.node.name().to_string());
    // No cleanup at first, to show what it is for.
    let mut syncer = ProxySyncer::new((h.make)(&topo.node, &cfg), cfg.clone());
    let sync = |syncer: &mut ProxySyncer, pods: &[(usize, &str)]| sync_pods(syncer, &svc, pods);
    sync(&mut syncer, &[(0, NODE)]);
    let sock = udp_client(&topo);
    assert_eq!(ask(&sock).expect("first answer"), "pod0");

    sync(&mut syncer, &[(1, NODE)]);
    assert_eq!(
        ask(&sock).expect("answer"),
        "pod0",
        "without cleanup the flow keeps its old NAT"
    );
    // The cleanup the sync loop runs, for that change.
    let tables =
        |pods: &[(usize, &str)]| table(&cfg, std::slice::from_ref(&svc), &[slice("web", pods)]);
    let mut ct = NetlinkConntrack::new(netns);
    let deleted = conntrack::cleanup(&mut ct, &tables(&[(0, NODE)]), &tables(&[(1, NODE)]))
        .expect("conntrack cleanup");
    assert_eq!(deleted, 1, "the client's one entry");
    assert_eq!(ask(&sock).expect("answer after cleanup"), "pod1");

    // From now on the sync loop cleans up after each sync.
    let mut syncer = syncer.with_conntrack(Box::new(ct));
    sync(&mut syncer, &[(0, NODE)]);
    assert_eq!(ask(&sock).expect("answer after the loop's cleanup"), "pod0");
    // Last endpoint gone: refused at once, not answered through the stale entry.
    sync(&mut syncer, &[]);
    let err = ask(&sock).expect_err("a service without endpoints must not answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // First endpoint again: the very next datagram reaches it.
    sync(&mut syncer, &[(2, "node-b")]);
    assert_eq!(ask(&sock).expect("answer after the first endpoint"), "pod2");
    let metrics = syncer.metrics().render_prometheus();
    assert!(
        metrics.contains("netlet_proxy_conntrack_entries_deleted_total 2\n"),
        "{metrics}"
    );
}
