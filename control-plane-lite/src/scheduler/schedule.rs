//! One scheduling decision: filter every cached node, score the ones that fit, pick the best
//! (ties at random), or explain per node why none fits in upstream's words.

use super::cache::Cache;
use super::filters::{run_filters, PodFacts};
use super::scores::score_nodes;
use k8s_openapi::api::core::v1::Pod;
use rand::Rng;
use std::collections::BTreeMap;
use std::fmt;

/// No node fits: how many nodes there were and how many failed for each reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub num_nodes: usize,
    /// Reason text to the number of nodes that gave it.
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    /// `0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu.`
    /// (entries as "count reason", sorted as strings, like upstream).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return write!(f, "no nodes available to schedule pods");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.num_nodes,
            parts.join(", ")
        )
    }
}

/// Picks a node for `pod` from `cache`.
pub fn find_node(pod: &Pod, cache: &Cache, rng: &mut impl Rng) -> Result<String, FitError> {
    let facts = PodFacts::new(pod);
    let mut feasible = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut num_nodes = 0;
    for info in cache.nodes() {
        num_nodes += 1;
        let failed = run_filters(&facts, info);
        if failed.is_empty() {
            feasible.push(info);
        }
        for r in failed {
            *reasons.entry(r.to_string()).or_default() += 1;
        }
    }
    if feasible.is_empty() {
        return Err(FitError { num_nodes, reasons });
    }
    let scores = score_nodes(pod, &feasible);
    // Reservoir sampling over the top score: each tied node is equally likely.
    let (mut best, mut best_score, mut ties) = (0, i64::MIN, 0u32);
    for (i, &s) in scores.iter().enumerate() {
        if s > best_score {
            (best, best_score, ties) = (i, s, 1);
        } else if s == best_score {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    Ok(feasible[best].name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use std::collections::HashSet;

    fn node(name: &str, cpu: &str, taint: bool) -> Node {
        let taints = taint.then(|| json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]));
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn pod(cpu: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
        .unwrap()
    }

    #[test]
    fn message_counts_reasons_per_node() {
        let mut cache = Cache::default();
        cache.upsert_node(node("a", "1", true));
        cache.upsert_node(node("b", "1", false));
        cache.upsert_node(node("c", "1", false));
        let err = find_node(&pod("2"), &cache, &mut rand::rng()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
        let empty = Cache::default();
        let err = find_node(&pod("2"), &empty, &mut rand::rng()).unwrap_err();
        assert_eq!(err.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn picks_the_best_and_breaks_ties_randomly() {
        let mut cache = Cache::default();
        cache.upsert_node(node("small", "1", false));
        cache.upsert_node(node("big", "8", false));
        // The big node leaves more free: always chosen.
        for _ in 0..20 {
            assert_eq!(
                find_node(&pod("500m"), &cache, &mut rand::rng()).unwrap(),
                "big"
            );
        }
        let mut cache = Cache::default();
        for n in ["x", "y", "z"] {
            cache.upsert_node(node(n, "4", false));
        }
        let picked: HashSet<String> = (0..200)
            .map(|_| find_node(&pod("1"), &cache, &mut rand::rng()).unwrap())
            .collect();
        assert_eq!(picked.len(), 3, "{picked:?}");
    }
}
