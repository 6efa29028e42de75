//! Node IPAM: gives every Node without `spec.podCIDR` the lowest free node-sized block of the
//! cluster CIDR (`spec.podCIDR` and `spec.podCIDRs`), like kube-controller-manager's range
//! allocator.
//!
//! The used set is never kept as separate state that could drift: it is re-derived from the
//! Nodes in the controller's reflector store on every allocation, so a restart picks up what
//! existing Nodes hold and a deleted Node's block is free again once its deletion reaches the
//! store. Blocks patched but not yet seen in the store are held in `pending` so two quick
//! allocations cannot hand out the same block.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::Future;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::Mutex;

use super::{ControllerError, ControllersConfig};

/// The `first`-th node-sized block of `cluster`, if there is one.
fn block(cluster: Ipv4Network, mask: u8, index: u32) -> Option<Ipv4Network> {
    let count = 1u64 << (mask - cluster.prefix());
    if u64::from(index) >= count {
        return None;
    }
    let base = u32::from(cluster.network());
    let ip = base + (index << (32 - u32::from(mask)));
    Ipv4Network::new(Ipv4Addr::from(ip), mask).ok()
}

/// The lowest block of `cluster` with prefix `mask` not in `used`.
pub fn first_free(
    cluster: Ipv4Network,
    mask: u8,
    used: &HashSet<Ipv4Network>,
) -> Option<Ipv4Network> {
    if mask < cluster.prefix() || mask > 32 {
        return None;
    }
    (0..=u32::MAX)
        .map_while(|i| block(cluster, mask, i))
        .find(|b| !used.contains(b))
}

/// Shared state of the reconciler.
struct Ctx {
    api: Api<Node>,
    store: Store<Node>,
    cluster: Ipv4Network,
    mask: u8,
    /// Node name → block patched onto it that the store may not show yet.
    pending: Mutex<HashMap<String, Ipv4Network>>,
    recorder: Recorder,
}

/// The node's pod CIDR, if it has one.
fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()
        .filter(|c| !c.is_empty())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if pod_cidr(&node).is_some() {
        return Ok(Action::await_change());
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut pending = ctx.pending.lock().await;
    let nodes = ctx.store.state();
    // Forget pending blocks whose node is gone or now shows a CIDR in the store.
    pending.retain(|n, _| {
        nodes
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(n) && pod_cidr(s).is_none())
    });
    let mut used: HashSet<Ipv4Network> = nodes
        .iter()
        .filter_map(|n| pod_cidr(n)?.parse().ok())
        .collect();
    used.extend(pending.iter().filter(|(n, _)| **n != name).map(|(_, b)| *b));
    let chosen = match pending.get(&name) {
        Some(b) => *b,
        None => match first_free(ctx.cluster, ctx.mask, &used) {
            Some(b) => b,
            None => {
                let err = ControllerError::CidrExhausted {
                    node: name.clone(),
                    cluster: ctx.cluster,
                    mask: ctx.mask,
                };
                tracing::error!(node = %name, error = %err, "node CIDR allocation failed");
                let event = Event {
                    type_: EventType::Warning,
                    reason: "CIDRNotAvailable".into(),
                    note: Some(err.to_string()),
                    action: "AllocateCIDR".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &node.object_ref(&())).await {
                    tracing::warn!(node = %name, error = %e, "recording CIDRNotAvailable event");
                }
                return Err(err);
            }
        },
    };
    let patch = json!({"spec": {"podCIDR": chosen.to_string(), "podCIDRs": [chosen.to_string()]}});
    ctx.api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(ControllerError::kube("patch podCIDR of node", name.clone()))?;
    pending.insert(name.clone(), chosen);
    tracing::info!(node = %name, pod_cidr = %chosen, "allocated node pod CIDR");
    Ok(Action::await_change())
}

/// Checks the config and returns the controller future (runs until its watch ends).
pub fn run(
    client: Client,
    config: &ControllersConfig,
) -> Result<impl Future<Output = ()>, ControllerError> {
    let (cluster, mask) = (config.cluster_cidr, config.node_cidr_mask_size);
    if mask < cluster.prefix() || mask > 32 || mask - cluster.prefix() > 31 {
        return Err(ControllerError::InvalidMask { cluster, mask });
    }
    let api: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let ctx = Arc::new(Ctx {
        api,
        store: controller.store(),
        cluster,
        mask,
        pending: Mutex::new(HashMap::new()),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "node-ipam-controller".into(),
                instance: None,
            },
        ),
    });
    Ok(super::drain(
        "node-ipam",
        controller.run(reconcile, super::on_error, ctx),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_block_and_exhaustion() {
        let cluster = net("10.244.0.0/16");
        let mut used = HashSet::new();
        assert_eq!(first_free(cluster, 24, &used), Some(net("10.244.0.0/24")));
        used.insert(net("10.244.0.0/24"));
        used.insert(net("10.244.2.0/24"));
        assert_eq!(first_free(cluster, 24, &used), Some(net("10.244.1.0/24")));
        let small = net("10.0.0.0/30");
        let all: HashSet<_> = ["10.0.0.0/31", "10.0.0.2/31"].map(net).into();
        assert_eq!(first_free(small, 31, &all), None);
        assert_eq!(first_free(cluster, 8, &used), None);
        assert_eq!(block(cluster, 24, 255), Some(net("10.244.255.0/24")));
        assert_eq!(block(cluster, 24, 256), None);
    }
}
