//! The service proxy inside the `netlet-agent` binary: run `--network-only` in an `nlt-`
//! namespace (the node) against our apiserver, a Service with an EndpointSlice must appear as
//! nftables rules in that namespace, carry TCP from the node to an endpoint in a second
//! namespace through the ClusterIP, be counted on the metrics endpoint, and disappear when
//! the Service goes. Reaching the apiserver from the node namespace works as in
//! `node_agent.rs` (helpers in `node_support`).

mod node_support;

use integration::netns::veth_between;
use integration::NetNs;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use node_support::{
    add_nic, apiserver_port, forward_into, in_netns, put_node, start_agent, wait_for,
};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "proxy-node";
/// The endpoint's address, in the second namespace; the node has `.1` on the same link.
const ENDPOINT_IP: &str = "10.244.9.2";
const ENDPOINT_PORT: u16 = 8080;

/// `nft list table ip netlet` in `ns`, empty while the table does not exist.
fn netlet_table(ns: &NetNs) -> String {
    let out = ns.run("nft", &["list", "table", "ip", "netlet"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP GET of the agent's metrics endpoint (127.0.0.1:10249 inside `ns`); `None` while
/// nothing answers there.
fn scrape(ns: &NetNs) -> Option<String> {
    let addr: SocketAddr = "127.0.0.1:10249".parse().unwrap();
    let mut s = in_netns(&ns.path(), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Connects from `ns` to `addr` and returns the first line the server sends; `None` if the
/// connection or the read fails (no rule yet, or the connection was refused).
fn greeting_via(ns: &NetNs, addr: SocketAddr) -> Option<String> {
    let mut s = in_netns(&ns.path(), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_only_agent_programs_services_in_its_namespace() {
    let ns = NetNs::new("aproxy");
    add_nic(&ns, "192.0.2.1");
    // The endpoint: a second namespace on a link from the node, answering with a greeting.
    let ep = NetNs::new("aproxyep");
    veth_between(&ns, "ep0", &ep, "eth0");
    ns.run_ok("ip", &["addr", "add", "10.244.9.1/24", "dev", "ep0"]);
    ns.run_ok("ip", &["link", "set", "ep0", "up"]);
    ep.run_ok(
        "ip",
        &["addr", "add", &format!("{ENDPOINT_IP}/24"), "dev", "eth0"],
    );
    ep.run_ok("ip", &["link", "set", "eth0", "up"]);
    let listener = in_netns(&ep.path(), || {
        std::net::TcpListener::bind((ENDPOINT_IP, ENDPOINT_PORT))
    })
    .expect("listening in the endpoint namespace");
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.write_all(b"hello from the endpoint\n").await;
        }
    });

    let server = integration::TestApiserver::start();
    let client = server.client().await;
    forward_into(&ns, apiserver_port(&server.kubeconfig()));
    let nodes: Api<Node> = Api::all(client.clone());
    put_node(&nodes, NODE, Some("10.244.9.0/24"), "192.0.2.1").await;

    let dir = tempfile::tempdir().unwrap();
    let agent_log = dir.path().join("agent.log");
    let (kubeconfig, conf_dir, state_dir) = (
        server.kubeconfig(),
        dir.path().join("net.d"),
        dir.path().join("state"),
    );
    let _agent = start_agent(
        &ns,
        &[
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
            "--node-name".as_ref(),
            NODE.as_ref(),
            "--network-only".as_ref(),
            "--no-routes".as_ref(),
            "--proxy-backend".as_ref(),
            "nftables".as_ref(),
            "--cni-conf-dir".as_ref(),
            conf_dir.as_os_str(),
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
        ],
        &agent_log,
    );
    let log = || {
        format!(
            "agent log:\n{}\nnft:\n{}",
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
            netlet_table(&ns)
        )
    };

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": ENDPOINT_PORT,
                            "protocol": "TCP"}]},
    }))
    .unwrap();
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("creating Service default/web");
    let cluster_ip = svc.spec.unwrap().cluster_ip.expect("a ClusterIP allocated");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ENDPOINT_IP], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": ENDPOINT_PORT, "protocol": "TCP"}],
    }))
    .unwrap();
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("creating EndpointSlice default/web-1");

    // The rules land in the node namespace: the frontend and the endpoint are map elements.
    let frontend = format!("{cluster_ip} . tcp . 80");
    let backend = format!("{ENDPOINT_IP} . {ENDPOINT_PORT}");
    wait_for(
        "the Service in the node's nftables table",
        WAIT,
        log,
        || async {
            let t = netlet_table(&ns);
            (t.contains(&frontend) && t.contains(&backend)).then_some(())
        },
    )
    .await;
    // …and only there: the other namespace of the test has no table of ours.
    assert!(netlet_table(&ep).is_empty(), "{}", log());

    // Traffic from the node to the ClusterIP reaches the endpoint.
    ns.run_ok(
        "ip",
        &["route", "add", &format!("{cluster_ip}/32"), "dev", "ep0"],
    );
    let addr: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let greeting = wait_for("a connection through the ClusterIP", WAIT, log, || async {
        greeting_via(&ns, addr)
    })
    .await;
    assert_eq!(greeting, "hello from the endpoint\n");

    // The metrics endpoint reports the programmed Services: ours and the apiserver's own
    // `default/kubernetes`, one endpoint each.
    let text = wait_for(
        "metrics with both Services programmed",
        WAIT,
        log,
        || async {
            scrape(&ns).filter(|t| {
                t.lines().any(|l| l == "netlet_proxy_services_programmed 2")
                    && t.lines()
                        .any(|l| l == "netlet_proxy_endpoints_programmed 2")
            })
        },
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains(&format!(
            "netlet_agent_info{{node=\"{NODE}\",network_only=\"true\"}} 1"
        )),
        "{text}"
    );

    // The Service goes: so do its rules.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("deleting Service default/web");
    slices
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("deleting EndpointSlice default/web-1");
    wait_for("the Service's rules removed", WAIT, log, || async {
        let t = netlet_table(&ns);
        (!t.is_empty() && !t.contains(&frontend) && !t.contains(&backend)).then_some(())
    })
    .await;
}
