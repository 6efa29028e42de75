//! InterPodAffinity: pod affinity and anti-affinity by topology domain (the value of a node
//! label, `topologyKey`), as upstream's plugin does it.
//!
//! Filter (required terms):
//! - each affinity term of the pod needs a pod matching it in the node's domain; when no pod
//!   in the cluster matches and the pod matches its own term, any node will do (the first pod
//!   of a group);
//! - no pod matching one of the pod's anti-affinity terms may be in the node's domain;
//! - no pod already placed may have an anti-affinity term matching this pod in its domain.
//!
//! Score (preferred terms): per node, the weights of the affinity terms minus those of the
//! anti-affinity terms, each times the matching pods in the node's domain, scaled to 0..=100.
//!
//! A term's namespaces are its `namespaces`, else every namespace for an empty
//! `namespaceSelector`, else the pod's own; a non-empty `namespaceSelector` is treated as the
//! pod's own namespace (the cache has no namespace labels).
//!
//! The index is built per pod over every node, only when the pod has such terms or some
//! placed pod has required anti-affinity, so pods without any pay nothing.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use super::cache::{NodeInfo, PodMeta};
use super::filters::Reason;
use crate::controllers::selector;

/// The pod's inter-pod constraints, resolved against the cluster's placed pods.
#[derive(Debug, Default)]
pub struct InterPod {
    /// Per required affinity term: its topology key and the domains with a matching pod
    /// (`None`: any node, the self-match case).
    affinity: Vec<(String, Option<HashSet<String>>)>,
    /// Per required anti-affinity term: its topology key and the domains it excludes.
    anti: Vec<(String, HashSet<String>)>,
    /// Domains placed pods' anti-affinity excludes this pod from: (topology key, value).
    existing_anti: HashSet<(String, String)>,
    /// Preferred terms: topology key, signed weight, matching pods per domain.
    preferred: Vec<(String, i64, HashMap<String, i64>)>,
}

/// Whether `term` (of a pod in `owner_ns`) selects the pod `meta`.
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, meta: &PodMeta) -> bool {
    let namespaces = term.namespaces.as_deref().unwrap_or_default();
    let ns_ok = if !namespaces.is_empty() {
        namespaces.contains(&meta.namespace)
    } else if term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    }) {
        true
    } else {
        meta.namespace == owner_ns
    };
    ns_ok
        && term
            .label_selector
            .as_ref()
            .is_some_and(|sel| selector::matches(sel, Some(&meta.labels)))
}

fn domain<'a>(node: &'a Node, key: &str) -> Option<&'a String> {
    node.metadata.labels.as_ref()?.get(key)
}

impl InterPod {
    /// The constraints of `pod` against the pods on `nodes`; `placed_anti` says whether any
    /// of them has required anti-affinity. `None` when there are none.
    pub fn prepare<'a>(
        pod: &Pod,
        placed_anti: bool,
        nodes: impl Iterator<Item = &'a NodeInfo>,
    ) -> Option<Self> {
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let req_aff = pa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        let req_anti = paa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        let pref: Vec<(&WeightedPodAffinityTerm, i64)> = pa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
            .iter()
            .map(|t| (t, 1))
            .chain(
                paa.and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default()
                .iter()
                .map(|t| (t, -1)),
            )
            .collect();
        if req_aff.is_empty() && req_anti.is_empty() && pref.is_empty() && !placed_anti {
            return None;
        }
        let me = PodMeta::new(pod);
        let mut out = InterPod {
            affinity: req_aff
                .iter()
                .map(|t| (t.topology_key.clone(), Some(HashSet::new())))
                .collect(),
            anti: req_anti
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            preferred: pref
                .iter()
                .map(|(t, sign)| {
                    let key = t.pod_affinity_term.topology_key.clone();
                    (key, sign * i64::from(t.weight), HashMap::new())
                })
                .collect(),
            ..InterPod::default()
        };
        let mut any_match = vec![false; req_aff.len()];
        for info in nodes {
            let Some(node) = info.node.as_deref() else {
                continue;
            };
            for other in info.metas.values() {
                for (i, term) in req_aff.iter().enumerate() {
                    if term_selects(term, &me.namespace, other) {
                        any_match[i] = true;
                        if let (Some(d), Some(set)) =
                            (domain(node, &term.topology_key), out.affinity[i].1.as_mut())
                        {
                            set.insert(d.clone());
                        }
                    }
                }
                for (i, term) in req_anti.iter().enumerate() {
                    if term_selects(term, &me.namespace, other) {
                        if let Some(d) = domain(node, &term.topology_key) {
                            out.anti[i].1.insert(d.clone());
                        }
                    }
                }
                for term in &other.anti {
                    if term_selects(term, &other.namespace, &me) {
                        if let Some(d) = domain(node, &term.topology_key) {
                            out.existing_anti
                                .insert((term.topology_key.clone(), d.clone()));
                        }
                    }
                }
                for (i, (t, _)) in pref.iter().enumerate() {
                    let term = &t.pod_affinity_term;
                    if term_selects(term, &me.namespace, other) {
                        if let Some(d) = domain(node, &term.topology_key) {
                            *out.preferred[i].2.entry(d.clone()).or_default() += 1;
                        }
                    }
                }
            }
        }
        for (i, term) in req_aff.iter().enumerate() {
            if !any_match[i] && term_selects(term, &me.namespace, &me) {
                out.affinity[i].1 = None;
            }
        }
        Some(out)
    }

    /// Why `node` breaks the required terms, if it does.
    pub fn filter(&self, node: &Node) -> Option<Reason> {
        for (key, allowed) in &self.affinity {
            let Some(allowed) = allowed else { continue };
            if !domain(node, key).is_some_and(|d| allowed.contains(d)) {
                return Some(Reason::PodAffinity);
            }
        }
        for (key, excluded) in &self.anti {
            if domain(node, key).is_some_and(|d| excluded.contains(d)) {
                return Some(Reason::PodAntiAffinity);
            }
        }
        let labels = node.metadata.labels.as_ref();
        let hit = labels.is_some_and(|l| {
            l.iter()
                .any(|(k, v)| self.existing_anti.contains(&(k.clone(), v.clone())))
        });
        hit.then_some(Reason::ExistingAntiAffinity)
    }

    /// The preferred-terms score of each of `nodes`, 0..=100 (all 0 without preferred terms).
    pub fn score(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let raw: Vec<i64> = nodes
            .iter()
            .map(|info| {
                let Some(node) = info.node.as_deref() else {
                    return 0;
                };
                self.preferred
                    .iter()
                    .map(|(key, weight, counts)| {
                        domain(node, key)
                            .map_or(0, |d| weight * counts.get(d).copied().unwrap_or(0))
                    })
                    .sum()
            })
            .collect();
        let (min, max) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        if max == min {
            return vec![0; raw.len()];
        }
        raw.iter().map(|r| (r - min) * 100 / (max - min)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node_info(name: &str, zone: &str, pods: &[Value]) -> NodeInfo {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": zone}}
        }))
        .unwrap();
        let mut info = NodeInfo::from_node(node);
        for (i, p) in pods.iter().enumerate() {
            let mut p = p.clone();
            p["metadata"]["name"] = json!(format!("{name}-{i}"));
            p["spec"]["nodeName"] = json!(name);
            info.add_pod(&serde_json::from_value(p).unwrap());
        }
        info
    }

    fn labelled(app: &str) -> Value {
        json!({"metadata": {"namespace": "default", "labels": {"app": app}}, "spec": {"containers": []}})
    }

    fn with_affinity(app: &str, affinity: Value) -> Pod {
        let mut p = labelled(app);
        p["metadata"]["name"] = json!("new");
        p["spec"]["affinity"] = affinity;
        serde_json::from_value(p).unwrap()
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    /// [`InterPod::prepare`] over `nodes` as the cache would call it.
    fn prepare(pod: &Pod, nodes: &[NodeInfo]) -> Option<InterPod> {
        let placed_anti = nodes
            .iter()
            .any(|n| n.metas.values().any(|m| !m.anti.is_empty()));
        InterPod::prepare(pod, placed_anti, nodes.iter())
    }

    fn node_of(info: &NodeInfo) -> &Node {
        info.node.as_deref().unwrap()
    }

    #[test]
    fn required_anti_affinity_spreads_replicas_over_hosts() {
        let nodes = [
            node_info("a", "z1", &[labelled("web")]),
            node_info("b", "z1", &[]),
        ];
        let pod = with_affinity(
            "web",
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                [term("web", "kubernetes.io/hostname")]}}),
        );
        let ip = prepare(&pod, &nodes).unwrap();
        assert_eq!(ip.filter(node_of(&nodes[0])), Some(Reason::PodAntiAffinity));
        assert_eq!(ip.filter(node_of(&nodes[1])), None);
        // By zone both nodes are excluded.
        let pod = with_affinity(
            "web",
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                [term("web", "zone")]}}),
        );
        let ip = prepare(&pod, &nodes).unwrap();
        assert!(nodes.iter().all(|n| ip.filter(node_of(n)).is_some()));
    }

    #[test]
    fn required_affinity_needs_a_match_in_the_domain_unless_first_of_its_group() {
        let nodes = [
            node_info("a", "z1", &[labelled("db")]),
            node_info("b", "z2", &[]),
        ];
        let pod = with_affinity(
            "web",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                [term("db", "zone")]}}),
        );
        let ip = prepare(&pod, &nodes).unwrap();
        assert_eq!(ip.filter(node_of(&nodes[0])), None);
        assert_eq!(ip.filter(node_of(&nodes[1])), Some(Reason::PodAffinity));
        // Co-locating with its own kind when none runs yet: anywhere.
        let pod = with_affinity(
            "cache",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                [term("cache", "zone")]}}),
        );
        let ip = prepare(&pod, &nodes).unwrap();
        assert!(nodes.iter().all(|n| ip.filter(node_of(n)).is_none()));
    }

    #[test]
    fn placed_pods_anti_affinity_keeps_matching_pods_away() {
        let mut guard = labelled("guard");
        guard["spec"]["affinity"] = json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term("web", "kubernetes.io/hostname")]}});
        let nodes = [node_info("a", "z1", &[guard]), node_info("b", "z1", &[])];
        let pod: Pod = serde_json::from_value({
            let mut p = labelled("web");
            p["metadata"]["name"] = json!("new");
            p
        })
        .unwrap();
        let ip = prepare(&pod, &nodes).unwrap();
        assert_eq!(
            ip.filter(node_of(&nodes[0])),
            Some(Reason::ExistingAntiAffinity)
        );
        assert_eq!(ip.filter(node_of(&nodes[1])), None);
        // A pod the guard does not select is free to go there.
        let other: Pod = serde_json::from_value({
            let mut p = labelled("db");
            p["metadata"]["name"] = json!("db");
            p
        })
        .unwrap();
        let ip = prepare(&other, &nodes).unwrap();
        assert_eq!(ip.filter(node_of(&nodes[0])), None);
    }

    #[test]
    fn preferred_terms_score_domains_and_no_terms_cost_nothing() {
        let nodes = [
            node_info("a", "z1", &[labelled("web"), labelled("web")]),
            node_info("b", "z2", &[]),
        ];
        let pod = with_affinity(
            "web",
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
                [{"weight": 50, "podAffinityTerm": term("web", "zone")}]}}),
        );
        let ip = prepare(&pod, &nodes).unwrap();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        assert_eq!(ip.score(&refs), [0, 100]);
        let plain: Pod = serde_json::from_value({
            let mut p = labelled("web");
            p["metadata"]["name"] = json!("plain");
            p
        })
        .unwrap();
        assert!(prepare(&plain, &nodes).is_none());
    }
}
