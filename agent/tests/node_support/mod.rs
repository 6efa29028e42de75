//! Helpers of the node-side tests (registration, routes, the agent binary in a namespace).

#![allow(dead_code)] // each test binary uses its own subset

use integration::{ChildGuard, NetNs};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `probe` every 100 ms until it returns `Some`, failing with `what` and `context()`
/// (e.g. the apiserver's or agent's log) after `timeout`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets `spec.podCIDR` (and `podCIDRs`) of a Node, as the control plane's node IPAM does.
pub async fn set_pod_cidr(nodes: &Api<Node>, name: &str, cidr: &str) {
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
        )
        .await
        .unwrap_or_else(|e| panic!("setting podCIDR {cidr} on Node {name}: {e}"));
}

/// The status of `node`'s `Ready` condition.
pub fn ready(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Runs `f` with the calling thread in the network namespace at `ns` and switches back; used
/// to open netlink sockets there (a socket stays in the namespace it was created in), the way
/// netlet-cni enters container namespaces.
pub fn in_netns<T>(ns: &std::path::Path, f: impl FnOnce() -> T) -> T {
    use nix::sched::{setns, CloneFlags};
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("opening own netns");
    let target =
        std::fs::File::open(ns).unwrap_or_else(|e| panic!("opening netns {}: {e}", ns.display()));
    setns(&target, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering netns {}: {e}", ns.display()));
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET).expect("returning to the test's own netns");
    out
}

/// Creates (or replaces) Node `name` with `pod_cidr` and an InternalIP, as registration and
/// node IPAM would leave it.
pub async fn put_node(nodes: &Api<Node>, name: &str, pod_cidr: Option<&str>, ip: &str) {
    use kube::api::PostParams;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr},
    }))
    .unwrap();
    if nodes.get_opt(name).await.unwrap().is_none() {
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
    } else if let Some(cidr) = pod_cidr {
        set_pod_cidr(nodes, name, cidr).await;
    }
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ]}})),
        )
        .await
        .unwrap_or_else(|e| panic!("setting addresses of Node {name}: {e}"));
}

/// `ip -n <ns> route show <selector…>` as sorted `"<dst> via <gw>"` strings.
pub fn routes(ns: &integration::NetNs, selector: &[&str]) -> Vec<String> {
    let mut args = vec!["-n", ns.name(), "route", "show"];
    args.extend_from_slice(selector);
    let out = integration::netns::run_ok(std::process::Command::new("ip").args(&args));
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    v
}

/// Relays TCP connections made to 127.0.0.1:`port` inside `ns` to 127.0.0.1:`port` of the
/// test's namespace, until the runtime ends.
pub fn forward_into(ns: &NetNs, port: u16) {
    let listener = in_netns(&ns.path(), || {
        std::net::TcpListener::bind(("127.0.0.1", port))
    })
    .unwrap_or_else(|e| panic!("listening on 127.0.0.1:{port} in {}: {e}", ns.name()));
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Connected from a runtime thread, which is in the test's namespace.
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

/// The port of the kubeconfig's server URL.
pub fn apiserver_port(kubeconfig: &Path) -> u16 {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let server = kc.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap();
    server
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in server URL {server}"))
}

/// Starts `netlet-agent args` inside `ns`, its stderr to `log`.
pub fn start_agent(ns: &NetNs, args: &[&std::ffi::OsStr], log: &Path) -> ChildGuard {
    ChildGuard::new(
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(env!("CARGO_BIN_EXE_netlet-agent"))
            .args(args)
            .env("RUST_LOG", "info,netlet_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("starting netlet-agent under nsenter"),
    )
}

/// Gives `ns` a NIC on the nodes' subnet with address `ip`/24.
pub fn add_nic(ns: &NetNs, ip: &str) {
    let cidr = format!("{ip}/24");
    for cmd in [
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"][..],
        &["addr", "add", &cidr, "dev", "d0"],
        &["link", "set", "d1", "up"],
        &["link", "set", "d0", "up"],
    ] {
        ns.run_ok("ip", cmd);
    }
}
