//! The healthCheckNodePort server through the sync loop: probed from outside the node, as a
//! cloud load balancer does, it reports whether the node has local endpoints.

use super::topology::*;
use super::{objects, service, slice, Harness};
use netlet_proxy::health_check::HealthCheckServer;
use netlet_proxy::sync_loop::ProxySyncer;
use netlet_proxy::watch::Change;
use netlet_proxy::NetnsExec;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

const HEALTH_PORT: u16 = 32100;

/// One probe from the external host: status code and JSON body, or the connection error.
fn probe(topo: &Topology) -> std::io::Result<(u16, Value)> {
    let addr: SocketAddr = format!("{NODE_IP}:{HEALTH_PORT}").parse().unwrap();
    in_ns(&topo.external, || {
        let mut s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
        s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
        let code = head
            .split(' ')
            .nth(1)
            .expect("status code")
            .parse()
            .unwrap();
        Ok((code, serde_json::from_str(body).expect("JSON body")))
    })
}

/// 200 with the count of local endpoints, 503 once the node has none, closed once the
/// Service is gone.
pub fn health_check_node_port_reports_local_endpoints(h: &Harness) {
    let topo = Topology::new();
    let cfg = topo.config();
    // The server runs on the daemon's runtime; here a runtime of the test's own.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let netns = NetnsExec::Named(topo.node.name().to_string());
    let server = HealthCheckServer::new(netns, runtime.handle().clone());
    let mut syncer =
        ProxySyncer::new((h.make)(&topo.node, &cfg), cfg.clone()).with_health_check(server);
    let mut svc = service(
        "web",
        "10.96.0.10",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
               "healthCheckNodePort": HEALTH_PORT}),
    );
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    svc["spec"]["ports"][1]["nodePort"] = json!(30053);
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.20"}]}});
    let mut sync = |services: &[Value], pods: &[(usize, &str)]| {
        let (svcs, slices) = objects(services, &[slice("web", pods)]);
        syncer
            .apply(&svcs, &slices, &Change::Resync)
            .expect("sync loop apply");
    };

    sync(std::slice::from_ref(&svc), &all_pods());
    let (code, body) = probe(&topo).expect("probe");
    assert_eq!((code, &body["localEndpoints"]), (200, &json!(2)), "{body}");
    assert_eq!(
        body["service"],
        json!({"namespace": "default", "name": "web"})
    );

    sync(std::slice::from_ref(&svc), &[(2, "node-b")]);
    let (code, body) = probe(&topo).expect("probe");
    assert_eq!((code, &body["localEndpoints"]), (503, &json!(0)), "{body}");

    sync(&[], &[]);
    let err = probe(&topo).expect_err("the port closes with its Service");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

fn all_pods() -> [(usize, &'static str); 3] {
    [(0, NODE), (1, NODE), (2, "node-b")]
}
