//! Scores: among the nodes that fit, which is best? Each score is a pure function giving
//! 0..=100 per node (higher is better); [`score_nodes`] adds them up.

use super::affinity;
use super::cache::{controller_uid, NodeInfo};
use super::resources::{pod_requests, Resources};
use k8s_openapi::api::core::v1::Pod;

/// The largest score one plugin gives a node.
pub const MAX_SCORE: i64 = 100;

/// Fraction of `alloc` that `used` takes, in 0..=1 (a resource the node lacks counts as full).
fn fraction(used: i64, alloc: i64) -> f64 {
    if alloc <= 0 {
        return 1.0;
    }
    (used as f64 / alloc as f64).clamp(0.0, 1.0)
}

/// The node's cpu and memory fractions once the pod (with non-zero default requests) is added.
fn fractions(pod: &Resources, info: &NodeInfo) -> (f64, f64) {
    let used = &info.non_zero_requested;
    let alloc = &info.allocatable;
    (
        fraction(used.milli_cpu + pod.milli_cpu, alloc.milli_cpu),
        fraction(used.memory + pod.memory, alloc.memory),
    )
}

/// LeastAllocated: prefers nodes with the most cpu and memory left after placing the pod
/// (mean of the free fractions), which spreads load.
pub fn least_allocated(pod: &Resources, info: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pod, info);
    (((1.0 - cpu) + (1.0 - mem)) / 2.0 * MAX_SCORE as f64) as i64
}

/// BalancedAllocation: prefers nodes whose cpu and memory use stay close to each other, so
/// neither is stranded (1 - standard deviation of the two fractions).
pub fn balanced_allocation(pod: &Resources, info: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pod, info);
    let std_dev = (cpu - mem).abs() / 2.0;
    ((1.0 - std_dev) * MAX_SCORE as f64) as i64
}

/// Scales raw per-node values so the largest becomes [`MAX_SCORE`] (all zero stays zero);
/// with `reverse`, the smallest raw value gets the highest score.
pub fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&v| {
            if max <= 0 {
                return if reverse { MAX_SCORE } else { 0 };
            }
            let s = v * MAX_SCORE / max;
            if reverse {
                MAX_SCORE - s
            } else {
                s
            }
        })
        .collect()
}

/// NodeAffinity (preferred): the matched preferred-term weights, normalized across nodes.
pub fn preferred_affinity(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.node
                .as_deref()
                .map_or(0, |node| affinity::preferred_weight(pod, node))
        })
        .collect();
    normalize(&raw, false)
}

/// Spreading: the fewer pods of the same controller a node already has, the better.
pub fn spread(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
    let Some(owner) = controller_uid(pod) else {
        return vec![0; nodes.len()];
    };
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| n.owners.get(owner).copied().unwrap_or(0) as i64)
        .collect();
    normalize(&raw, true)
}

/// Weights of the scores in the sum: affinity preferences count double, as upstream's default
/// profile has it, and spreading matters as much as resources.
const WEIGHTS: [i64; 4] = [1, 1, 2, 2];

/// The total score of each node in `nodes` for `pod`.
pub fn score_nodes(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
    let req = pod_requests(pod, true);
    let affinity = preferred_affinity(pod, nodes);
    let spread = spread(pod, nodes);
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            WEIGHTS[0] * least_allocated(&req, n)
                + WEIGHTS[1] * balanced_allocation(&req, n)
                + WEIGHTS[2] * affinity[i]
                + WEIGHTS[3] * spread[i]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{json, Value};

    fn info(cpu: &str, mem: &str, labels: Value) -> NodeInfo {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}
        }))
        .unwrap();
        NodeInfo::from_node(node)
    }

    fn pod(name: &str, cpu: &str, mem: &str, owner: Option<&str>) -> Pod {
        let refs = owner.map(|uid| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid,
                "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": refs},
            "spec": {"containers": [{"name": "c",
                "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}
        }))
        .unwrap()
    }

    fn req(cpu: i64, memory: i64) -> Resources {
        Resources {
            milli_cpu: cpu,
            memory,
            pods: 1,
        }
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let empty = info("4", "4Gi", json!({}));
        let mut busy = info("4", "4Gi", json!({}));
        busy.add_pod(&pod("a", "2", "2Gi", None));
        let r = req(1000, 1 << 30);
        assert_eq!(least_allocated(&r, &empty), 75);
        assert_eq!(least_allocated(&r, &busy), 25);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let n = info("4", "4Gi", json!({}));
        assert_eq!(balanced_allocation(&req(2000, 2 << 30), &n), 100);
        assert_eq!(balanced_allocation(&req(4000, 0), &n), 50);
    }

    #[test]
    fn normalize_scales_to_max_and_reverses() {
        assert_eq!(normalize(&[0, 5, 10], false), vec![0, 50, 100]);
        assert_eq!(normalize(&[0, 5, 10], true), vec![100, 50, 0]);
        assert_eq!(normalize(&[0, 0], false), vec![0, 0]);
        assert_eq!(normalize(&[0, 0], true), vec![100, 100]);
    }

    #[test]
    fn spread_prefers_nodes_without_siblings() {
        let mut a = info("4", "4Gi", json!({}));
        a.add_pod(&pod("x", "1", "1Gi", Some("rs1")));
        a.add_pod(&pod("y", "1", "1Gi", Some("rs1")));
        let mut b = info("4", "4Gi", json!({}));
        b.add_pod(&pod("z", "1", "1Gi", Some("rs1")));
        let c = info("4", "4Gi", json!({}));
        let p = pod("new", "1", "1Gi", Some("rs1"));
        assert_eq!(spread(&p, &[&a, &b, &c]), vec![0, 50, 100]);
        let orphan = pod("o", "1", "1Gi", None);
        assert_eq!(spread(&orphan, &[&a, &b]), vec![0, 0]);
    }

    #[test]
    fn preferred_affinity_normalizes_weights() {
        let a = info("4", "4Gi", json!({"zone": "a"}));
        let b = info("4", "4Gi", json!({"zone": "b"}));
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [], "affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 20, "preference":
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}]}}}}))
        .unwrap();
        assert_eq!(preferred_affinity(&p, &[&a, &b]), vec![0, 100]);
        let totals = score_nodes(&p, &[&a, &b]);
        assert!(totals[1] > totals[0], "{totals:?}");
    }
}
