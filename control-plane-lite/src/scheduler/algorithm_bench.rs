//! The scheduling algorithm alone, in memory: `nodes` nodes and `pods` pods shaped like
//! upstream scheduler_perf's `SchedulingBasic` (nodes of 4 CPU / 32 Gi / 110 pods, pods
//! requesting 100m / 500 Mi), each decision followed by the assume the real loop does. No API,
//! no binds: what the decision loop could do if the apiserver were free. Run through the
//! hidden `netlet-control-plane bench-scheduler-algorithm` by `cargo xtask bench scheduler`,
//! so the number comes from a release build.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;
use serde_json::json;

use super::cache::Cache;
use super::schedule::{find_node, NodeCursor};

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct AlgorithmResult {
    /// Nodes in the cache.
    pub nodes: usize,
    /// Pods decided.
    pub pods: usize,
    /// Pods that fit nowhere (should be 0 at these sizes).
    pub unschedulable: usize,
    /// Wall time of all decisions.
    pub seconds: f64,
    /// Decisions per second.
    pub pods_per_second: f64,
}

/// A node as `SchedulingBasic`'s node template.
fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:05}"), "labels": {"kubernetes.io/hostname": format!("node-{i:05}")}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .expect("static node shape")
}

/// A pod as `SchedulingBasic`'s pod template.
fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i:06}"), "namespace": "bench", "uid": format!("uid-{i}")},
        "spec": {"containers": [{
            "name": "pause", "image": "localhost/netlet-pause:1",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
        }]},
    }))
    .expect("static pod shape")
}

/// Decides `pods` pods over `nodes` nodes and times it.
pub fn run(nodes: usize, pods: usize) -> AlgorithmResult {
    let mut cache = Cache::default();
    for i in 0..nodes {
        cache.upsert_node(node(i));
    }
    let pods: Vec<Pod> = (0..pods).map(pod).collect();
    let mut cursor = NodeCursor::default();
    let mut rng = rand::rng();
    let mut unschedulable = 0;
    let start = Instant::now();
    for p in &pods {
        match find_node(p, &cache, &mut cursor, &mut rng) {
            Ok(n) => cache.assume(p, &n),
            Err(_) => unschedulable += 1,
        }
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    AlgorithmResult {
        nodes,
        pods: pods.len(),
        unschedulable,
        seconds: elapsed.as_secs_f64(),
        pods_per_second: pods.len() as f64 / elapsed.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_is_placed_within_node_capacity() {
        let r = run(20, 500);
        assert_eq!((r.nodes, r.pods, r.unschedulable), (20, 500, 0));
        // CPU binds first: 4 CPU hold 40 pods of 100m (memory would allow 64, pods 110), so
        // two nodes take 80 and the 81st fits nowhere.
        let full = run(2, 81);
        assert_eq!(full.unschedulable, 1);
    }
}
