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
