//! The conformance cases. Each builds its own [`Topology`], programs it through the harness's
//! backend and checks what real connections experience.

use super::topology::*;
use super::{service, slice, table, Harness};
use netlet_proxy::ServiceTable;
use netlet_proxy::{Backend, ServiceKey};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

const VIP: &str = "10.96.0.10";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pods(hellos: &[Hello]) -> BTreeSet<String> {
    hellos.iter().map(|h| h.pod.clone()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn all_pods() -> [(usize, &'static str); 3] {
    [(0, NODE), (1, NODE), (2, "node-b")]
}

/// Topology plus a backend that has synced `web` (VIP) with all three pods.
fn setup(h: &Harness) -> (Topology, Box<dyn Backend>) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let t = table(
        &cfg,
        &[service("web", VIP, json!({}))],
        &[slice("web", &all_pods())],
    );
    backend.sync(&t).expect("sync");
    (topo, backend)
}

/// Without the capability the sync of `t` must fail naming `service` and `feature`.
fn expect_refused(backend: &mut Box<dyn Backend>, t: &ServiceTable, service: &str, feature: &str) {
    let err = backend
        .sync(t)
        .expect_err("the backend must refuse what it cannot do")
        .to_string();
    assert!(
        err.contains(service) && err.contains(feature),
        "error must name {service} and {feature}: {err}"
    );
}

/// TCP to a cluster IP reaches every ready endpoint, and pods see the client pod's own address.
pub fn tcp_cluster_ip_balances_and_keeps_client_ip(h: &Harness) {
    let (topo, _backend) = setup(h);
    let hellos = tcp_hellos(&topo.client, addr(VIP, 80), 30);
    assert_eq!(pods(&hellos), set(&["pod0", "pod1", "pod2"]), "{hellos:?}");
    for hello in &hellos {
        assert_eq!(
            hello.peer,
            ip(CLIENT_IP),
            "pod to service to pod is not masqueraded"
        );
    }
}

/// UDP to a cluster IP is answered, spread over the endpoints.
pub fn udp_cluster_ip_answers(h: &Harness) {
    let (topo, _backend) = setup(h);
    let hellos: Vec<Hello> = in_ns(&topo.client, || {
        (0..20)
            .map(|_| udp_ask(addr(VIP, 53)).expect("udp answer"))
            .collect()
    });
    assert!(pods(&hellos).len() >= 2, "{hellos:?}");
    assert!(hellos.iter().all(|h| h.peer == ip(CLIENT_IP)), "{hellos:?}");
}

/// After an endpoint leaves the table, new connections avoid it (partial and full sync).
pub fn removed_endpoint_gets_no_new_connections(h: &Harness) {
    let (topo, mut backend) = setup(h);
    let cfg = topo.config();
    let svc = service("web", VIP, json!({}));
    let smaller = table(
        &cfg,
        std::slice::from_ref(&svc),
        &[slice("web", &[(0, NODE), (1, NODE)])],
    );
    let stats = backend
        .sync_changed(&smaller, &[ServiceKey::new("default", "web")])
        .expect("partial sync");
    assert!(!stats.is_noop());
    let hellos = tcp_hellos(&topo.client, addr(VIP, 80), 20);
    assert_eq!(pods(&hellos), set(&["pod0", "pod1"]), "{hellos:?}");
    let one = table(&cfg, &[svc], &[slice("web", &[(1, NODE)])]);
    backend.sync(&one).expect("full sync");
    let hellos = tcp_hellos(&topo.client, addr(VIP, 80), 10);
    assert_eq!(pods(&hellos), set(&["pod1"]), "{hellos:?}");
}

/// A Service without endpoints refuses at once (TCP reset / ICMP port unreachable), no timeout.
pub fn service_without_endpoints_rejects_at_once(h: &Harness) {
    let (topo, mut backend) = setup(h);
    let cfg = topo.config();
    let t = table(
        &cfg,
        &[
            service("web", VIP, json!({})),
            service("empty", "10.96.0.20", json!({})),
        ],
        &[slice("web", &all_pods())],
    );
    backend.sync(&t).expect("sync");
    if !h.caps.reject {
        // Documented substitute: the packets are dropped, so both clients time out.
        let (tcp, udp) = in_ns(&topo.client, || {
            (
                tcp_connect(addr("10.96.0.20", 80)).err(),
                udp_ask(addr("10.96.0.20", 53)).err(),
            )
        });
        assert_eq!(tcp.map(|e| e.kind()), Some(ErrorKind::TimedOut));
        assert!(
            matches!(
                udp.map(|e| e.kind()),
                Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)
            ),
            "udp to a service without endpoints must go unanswered"
        );
        assert_eq!(tcp_hellos(&topo.client, addr(VIP, 80), 1).len(), 1);
        return;
    }
    let (tcp, udp, took) = in_ns(&topo.client, || {
        let start = Instant::now();
        let tcp = tcp_connect(addr("10.96.0.20", 80)).err();
        let udp = udp_ask(addr("10.96.0.20", 53)).err();
        (tcp, udp, start.elapsed())
    });
    assert_eq!(tcp.map(|e| e.kind()), Some(ErrorKind::ConnectionRefused));
    assert_eq!(udp.map(|e| e.kind()), Some(ErrorKind::ConnectionRefused));
    assert!(took < CLIENT_TIMEOUT / 2, "rejects took {took:?}");
    // The other service is unaffected.
    assert_eq!(tcp_hellos(&topo.client, addr(VIP, 80), 1).len(), 1);
}

/// ClientIP affinity sends every connection of a client to the same endpoint.
pub fn session_affinity_sticks(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let affine = json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}});
    let t = table(
        &cfg,
        &[service("web", VIP, affine)],
        &[slice("web", &all_pods())],
    );
    if !h.caps.session_affinity {
        return expect_refused(&mut backend, &t, "default/web", "sessionAffinity");
    }
    backend.sync(&t).expect("sync");
    let hellos = tcp_hellos(&topo.client, addr(VIP, 80), 15);
    assert_eq!(pods(&hellos).len(), 1, "{hellos:?}");
    if !h.caps.masquerade {
        // The only other client is the external host, whose cluster-IP traffic such a
        // backend does not translate (see external_client_to_cluster_ip_is_masqueraded).
        return;
    }
    // A different client is balanced independently but sticks too.
    let hellos = tcp_hellos(&topo.external, addr(VIP, 80), 10);
    assert_eq!(pods(&hellos).len(), 1, "{hellos:?}");
}

/// A pod reaching itself through its Service works: that one path is masqueraded.
pub fn hairpin_is_masqueraded(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let t = table(
        &cfg,
        &[service("web", VIP, json!({}))],
        &[slice("web", &[(0, NODE)])],
    );
    backend.sync(&t).expect("sync");
    // Without masquerading only the non-hairpin path below is checked.
    let hellos = if h.caps.masquerade {
        tcp_hellos(&topo.pods[0], addr(VIP, 80), 3)
    } else {
        Vec::new()
    };
    for hello in &hellos {
        assert_eq!(hello.pod, "pod0");
        assert_eq!(
            hello.peer,
            ip(NODE_BRIDGE_IP),
            "hairpin must be masqueraded"
        );
    }
    // Another pod reaching it keeps its address.
    let hellos = tcp_hellos(&topo.pods[1], addr(VIP, 80), 3);
    assert!(
        hellos.iter().all(|h| h.peer == ip(&pod_ip(1))),
        "{hellos:?}"
    );
}

/// Off-cluster clients reaching a cluster IP through the node are masqueraded.
pub fn external_client_to_cluster_ip_is_masqueraded(h: &Harness) {
    let (topo, _backend) = setup(h);
    if !h.caps.masquerade {
        // Documented substitute: off-cluster traffic is not translated at all (no half-NAT
        // whose replies would bypass the reverse translation).
        let got = in_ns(&topo.external, || {
            tcp_connect(addr(VIP, 80)).map(|c| c.hello)
        });
        assert!(got.is_err(), "untranslated VIP must not answer: {got:?}");
        return;
    }
    let hellos = tcp_hellos(&topo.external, addr(VIP, 80), 5);
    assert!(
        hellos.iter().all(|h| h.peer == ip(NODE_BRIDGE_IP)),
        "{hellos:?}"
    );
}

/// Node port, external IP and load-balancer IP reach the endpoints; with policy Cluster the
/// traffic is masqueraded.
pub fn node_port_external_ip_and_lb_ip_with_cluster_policy(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let mut svc = service(
        "web",
        VIP,
        json!({"type": "LoadBalancer", "externalIPs": ["203.0.113.10"]}),
    );
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.20"}]}});
    let t = table(&cfg, &[svc], &[slice("web", &all_pods())]);
    if !h.caps.external_frontends {
        return expect_refused(&mut backend, &t, "default/web:http", "nodePort");
    }
    backend.sync(&t).expect("sync");
    for target in [
        addr(NODE_IP, 30080),
        addr("203.0.113.10", 80),
        addr("198.51.100.20", 80),
    ] {
        let hellos = tcp_hellos(&topo.external, target, 15);
        assert!(pods(&hellos).len() >= 2, "{target}: {hellos:?}");
        assert!(
            hellos.iter().all(|h| h.peer == ip(NODE_BRIDGE_IP)),
            "{target}: {hellos:?}"
        );
    }
}

/// externalTrafficPolicy Local: external clients keep their address and reach only this
/// node's endpoints; pods still reach the external address through any endpoint.
pub fn external_policy_local_keeps_source_and_stays_local(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let mut svc = service(
        "web",
        VIP,
        json!({"type": "NodePort", "externalTrafficPolicy": "Local", "externalIPs": ["203.0.113.10"]}),
    );
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    let t = table(&cfg, &[svc], &[slice("web", &[(0, NODE), (2, "node-b")])]);
    if !h.caps.external_frontends {
        return expect_refused(&mut backend, &t, "default/web:http", "nodePort");
    }
    backend.sync(&t).expect("sync");
    for target in [addr(NODE_IP, 30080), addr("203.0.113.10", 80)] {
        let hellos = tcp_hellos(&topo.external, target, 10);
        assert_eq!(pods(&hellos), set(&["pod0"]), "{target}: {hellos:?}");
        assert!(
            hellos.iter().all(|h| h.peer == ip(EXTERNAL_IP)),
            "{target}: {hellos:?}"
        );
    }
    let hellos = tcp_hellos(&topo.client, addr("203.0.113.10", 80), 20);
    assert_eq!(pods(&hellos), set(&["pod0", "pod2"]), "{hellos:?}");
}

/// internalTrafficPolicy Local: in-cluster clients reach only this node's endpoints.
pub fn internal_policy_local_uses_local_endpoints(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let svc = service("web", VIP, json!({"internalTrafficPolicy": "Local"}));
    let t = table(&cfg, &[svc], &[slice("web", &[(0, NODE), (2, "node-b")])]);
    backend.sync(&t).expect("sync");
    let hellos = tcp_hellos(&topo.client, addr(VIP, 80), 10);
    assert_eq!(pods(&hellos), set(&["pod0"]), "{hellos:?}");
}

/// Syncing the same table again changes nothing, and neither resyncs, partial syncs of other
/// services, nor a restarted backend break an established connection.
pub fn resync_is_noop_and_keeps_established_connections(h: &Harness) {
    let (topo, mut backend) = setup(h);
    let cfg = topo.config();
    let web = service("web", VIP, json!({}));
    let t = table(
        &cfg,
        std::slice::from_ref(&web),
        &[slice("web", &all_pods())],
    );
    let mut conn = in_ns(&topo.client, || tcp_connect(addr(VIP, 80))).expect("connect");
    let before = (h.leftovers)(&topo.node);

    let stats = backend.sync(&t).expect("resync");
    assert!(stats.is_noop(), "{stats:?}");
    assert_eq!((h.leftovers)(&topo.node), before);
    conn.echo("after resync")
        .expect("connection survives resync");

    let other = service("other", "10.96.0.30", json!({}));
    let t2 = table(
        &cfg,
        &[web.clone(), other],
        &[slice("web", &all_pods()), slice("other", &[(1, NODE)])],
    );
    let stats = backend
        .sync_changed(&t2, &[ServiceKey::new("default", "other")])
        .expect("partial sync");
    assert!(!stats.is_noop());
    conn.echo("after partial sync")
        .expect("connection survives partial sync");

    drop(backend);
    let mut restarted = (h.make)(&topo.node, &cfg);
    let stats = restarted.sync(&t2).expect("sync after restart");
    assert_eq!(stats.chains_deleted, 0, "{stats:?}");
    conn.echo("after restart")
        .expect("connection survives a restart");
    assert!(restarted.sync(&t2).expect("again").is_noop());
    conn.echo("still").expect("connection survives");
}

/// A restarted proxy removes what the previous one installed for Services that are gone.
pub fn restart_removes_stale_services(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let web = service("web", VIP, json!({}));
    let stale = service("stale", "10.96.0.40", json!({}));
    let both = table(
        &cfg,
        &[web.clone(), stale],
        &[slice("web", &all_pods()), slice("stale", &[(2, "node-b")])],
    );
    (h.make)(&topo.node, &cfg)
        .sync(&both)
        .expect("first process");
    assert!((h.leftovers)(&topo.node)
        .iter()
        .any(|l| l.contains("default/stale")));

    let mut restarted = (h.make)(&topo.node, &cfg);
    let only_web = table(&cfg, &[web], &[slice("web", &all_pods())]);
    let stats = restarted.sync(&only_web).expect("second process");
    assert!(stats.chains_deleted > 0, "{stats:?}");
    let left = (h.leftovers)(&topo.node);
    assert!(
        !left.iter().any(|l| l.contains("default/stale")),
        "{left:#?}"
    );
    assert_eq!(tcp_hellos(&topo.client, addr(VIP, 80), 3).len(), 3);
}

/// Cleanup removes everything; afterwards nothing of the backend is left and the VIP is dead.
pub fn cleanup_removes_everything(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    let mut backend = (h.make)(&topo.node, &cfg);
    let mut svc = service(
        "web",
        VIP,
        json!({"type": "NodePort", "sessionAffinity": "ClientIP", "externalIPs": ["203.0.113.10"]}),
    );
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    if !(h.caps.external_frontends && h.caps.session_affinity) {
        svc = service("web", VIP, json!({}));
    }
    let t = table(
        &cfg,
        &[svc, service("empty", "10.96.0.20", json!({}))],
        &[slice("web", &all_pods())],
    );
    backend.sync(&t).expect("sync");
    assert!(!(h.leftovers)(&topo.node).is_empty());
    let stats = backend.cleanup().expect("cleanup");
    assert!(!stats.is_noop());
    let left = (h.leftovers)(&topo.node);
    assert!(left.is_empty(), "left after cleanup: {left:#?}");
    assert!(backend.cleanup().expect("second cleanup").is_noop());
    // A fresh process cleaning up finds nothing either.
    assert!((h.make)(&topo.node, &cfg)
        .cleanup()
        .expect("cleanup")
        .is_noop());
}
