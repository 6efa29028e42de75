//! Helpers of the node-side tests (registration, routes, the agent binary).

#![allow(dead_code)] // each test binary uses its own subset

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use std::future::Future;
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
