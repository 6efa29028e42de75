//! Node selector terms (`nodeSelector`, node affinity, `matchExpressions`/`matchFields`):
//! whether a node's labels and name satisfy them. Shared by the NodeAffinity filter and the
//! preferred-affinity score.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod};

/// One requirement against a value that may be absent (`In`, `NotIn`, `Exists`, `DoesNotExist`,
/// `Gt`, `Lt`); unknown operators never match.
fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) if req.operator == "Gt" => v > b,
                (Ok(v), Ok(b)) => v < b,
                _ => false,
            }
        }
        _ => false,
    }
}

/// A term matches when all of its expressions (labels) and fields (`metadata.name`) match;
/// an empty term matches nothing (as upstream).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = match r.key.as_str() {
                "metadata.name" => node.metadata.name.as_deref(),
                _ => None,
            };
            r.key == "metadata.name" && requirement_matches(r, value)
        })
}

/// Whether `node` satisfies the pod's `nodeSelector` and its required node affinity
/// (terms are ORed).
pub fn required_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(selector) = &spec.node_selector {
        let labels = node.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

/// The sum of the weights of the pod's preferred node-affinity terms that `node` matches.
pub fn preferred_weight(pod: &Pod, node: &Node) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, node))
        .map(|p| i64::from(p.weight))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node() -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1",
            "labels": {"zone": "a", "gen": "5", "ssd": "true"}}}))
        .unwrap()
    }

    fn pod_with(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn required(term: Value) -> Pod {
        pod_with(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}}))
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Value {
        json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
    }

    #[test]
    fn every_operator() {
        let n = node();
        let cases = [
            (expr("zone", "In", &["a", "b"]), true),
            (expr("zone", "In", &["b"]), false),
            (expr("zone", "NotIn", &["b"]), true),
            (expr("zone", "NotIn", &["a"]), false),
            (expr("missing", "NotIn", &["a"]), true),
            (expr("ssd", "Exists", &[]), true),
            (expr("gpu", "Exists", &[]), false),
            (expr("gpu", "DoesNotExist", &[]), true),
            (expr("ssd", "DoesNotExist", &[]), false),
            (expr("gen", "Gt", &["4"]), true),
            (expr("gen", "Gt", &["5"]), false),
            (expr("gen", "Lt", &["6"]), true),
            (expr("zone", "Lt", &["6"]), false),
            (expr("zone", "Bogus", &["a"]), false),
            (
                json!({"matchFields": [{"key": "metadata.name", "operator": "In",
                "values": ["n1"]}]}),
                true,
            ),
            (
                json!({"matchFields": [{"key": "metadata.name", "operator": "NotIn",
                "values": ["n1"]}]}),
                false,
            ),
            (json!({}), false),
        ];
        for (term, want) in cases {
            assert_eq!(
                required_matches(&required(term.clone()), &n),
                want,
                "{term}"
            );
        }
    }

    #[test]
    fn node_selector_needs_every_label() {
        let n = node();
        let p = pod_with(json!({"containers": [], "nodeSelector": {"zone": "a", "ssd": "true"}}));
        assert!(required_matches(&p, &n));
        let p = pod_with(json!({"containers": [], "nodeSelector": {"zone": "b"}}));
        assert!(!required_matches(&p, &n));
        assert!(required_matches(&pod_with(json!({"containers": []})), &n));
    }

    #[test]
    fn preferred_weights_add_up_over_matching_terms() {
        let p = pod_with(json!({"containers": [], "affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": expr("zone", "In", &["a"])},
            {"weight": 5, "preference": expr("ssd", "Exists", &[])},
            {"weight": 50, "preference": expr("zone", "In", &["b"])},
        ]}}}));
        assert_eq!(preferred_weight(&p, &node()), 15);
    }
}
