//! Filters: may this pod run on this node at all? Each is a pure function of the pod and the
//! node's cached sums, returning the upstream-worded reasons it fails, which the
//! `FailedScheduling` message counts per node.

use super::affinity;
use super::cache::{host_ports, NodeInfo};
use super::resources::{pod_requests, Resources};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use std::fmt;

/// Why a node was rejected; `Display` is upstream's wording.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The node's Ready condition is not True.
    NotReady,
    /// `spec.unschedulable` and the pod does not tolerate it.
    Unschedulable,
    /// The pod names another node in `spec.nodeName`.
    NodeName,
    /// A NoSchedule/NoExecute taint the pod does not tolerate: key and value.
    UntoleratedTaint(String, String),
    /// nodeSelector or required node affinity does not match.
    NodeAffinity,
    /// A requested host port is taken.
    NodePorts,
    /// Not enough of a resource left (`cpu`, `memory`).
    Insufficient(&'static str),
    /// No pod slot left.
    TooManyPods,
    /// A required pod affinity term has no matching pod in the node's domain.
    PodAffinity,
    /// A required pod anti-affinity term has a matching pod in the node's domain.
    PodAntiAffinity,
    /// A pod in the node's domain has anti-affinity against this pod.
    ExistingAntiAffinity,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotReady => write!(f, "node(s) were not ready"),
            Reason::Unschedulable => write!(f, "node(s) were unschedulable"),
            Reason::NodeName => write!(f, "node(s) didn't match the requested node name"),
            Reason::UntoleratedTaint(k, v) => {
                write!(f, "node(s) had untolerated taint {{{k}: {v}}}")
            }
            Reason::NodeAffinity => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Reason::NodePorts => {
                write!(
                    f,
                    "node(s) didn't have free ports for the requested pod ports"
                )
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => write!(f, "Too many pods"),
            Reason::PodAffinity => write!(f, "node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => write!(f, "node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                write!(
                    f,
                    "node(s) didn't satisfy existing pods anti-affinity rules"
                )
            }
        }
    }
}

/// A pod's scheduling-relevant facts, computed once per attempt instead of once per node.
#[derive(Debug)]
pub struct PodFacts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its requests (no defaults), for fit.
    pub requests: Resources,
    /// Its host ports.
    pub ports: Vec<super::cache::HostPort>,
}

impl<'a> PodFacts<'a> {
    /// Computes the facts of `pod`.
    pub fn new(pod: &'a Pod) -> Self {
        Self {
            pod,
            requests: pod_requests(pod, false),
            ports: host_ports(pod),
        }
    }

    fn tolerations(&self) -> &[Toleration] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }
}

/// Runs the filters in upstream's order and returns the first failing one's reasons
/// (empty: the node fits).
pub fn run_filters(pod: &PodFacts<'_>, info: &NodeInfo) -> Vec<Reason> {
    let Some(node) = info.node.as_deref() else {
        return vec![Reason::NotReady];
    };
    // The node's own facts come from the cached flags; the node object is read only when the
    // pod or those flags call for it (see `NodeInfo::ready`).
    if !info.ready {
        return vec![Reason::NotReady];
    }
    // Upstream's order: the first failing filter is the node's reason.
    let spec = |filter: fn(&PodFacts<'_>, &Node) -> Option<Reason>| {
        info.spec_rules.then(|| filter(pod, node)).flatten()
    };
    let single = spec(node_unschedulable)
        .or_else(|| node_name(pod.pod, node))
        .or_else(|| spec(taint_toleration))
        .or_else(|| node_affinity(pod.pod, node))
        .or_else(|| node_ports(pod, info));
    match single {
        Some(reason) => vec![reason],
        None => resources_fit(pod, info),
    }
}

/// NodeReady: only nodes whose Ready condition is True take pods.
pub fn node_ready(node: &Node) -> Option<Reason> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (!ready).then_some(Reason::NotReady)
}

/// Whether `toleration` tolerates `taint` (key/operator/value/effect; an empty key with Exists
/// tolerates everything, an empty effect every effect).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// NodeUnschedulable: a cordoned node takes only pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(pod: &PodFacts<'_>, node: &Node) -> Option<Reason> {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !cordoned {
        return None;
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    (!pod.tolerations().iter().any(|t| tolerates(t, &taint))).then_some(Reason::Unschedulable)
}

/// NodeName: a pod that names a node in `spec.nodeName` fits only there.
pub fn node_name(pod: &Pod, node: &Node) -> Option<Reason> {
    let wanted = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    match wanted {
        Some(w) if !w.is_empty() && Some(w) != node.metadata.name.as_deref() => {
            Some(Reason::NodeName)
        }
        _ => None,
    }
}

/// Whether a taint keeps untolerating pods away (NoSchedule, NoExecute; PreferNoSchedule is
/// only a preference).
pub fn restricts_scheduling(taint: &Taint) -> bool {
    taint.effect == "NoSchedule" || taint.effect == "NoExecute"
}

/// TaintToleration: every NoSchedule/NoExecute taint must be tolerated.
pub fn taint_toleration(pod: &PodFacts<'_>, node: &Node) -> Option<Reason> {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref());
    taints
        .unwrap_or_default()
        .iter()
        .filter(|t| restricts_scheduling(t))
        .find(|taint| !pod.tolerations().iter().any(|t| tolerates(t, taint)))
        .map(|t| Reason::UntoleratedTaint(t.key.clone(), t.value.clone().unwrap_or_default()))
}

/// NodeAffinity: `nodeSelector` and required node affinity.
pub fn node_affinity(pod: &Pod, node: &Node) -> Option<Reason> {
    (!affinity::required_matches(pod, node)).then_some(Reason::NodeAffinity)
}

/// NodePorts: a host port conflicts when protocol and port are equal and either side binds
/// every address or both bind the same one.
pub fn node_ports(pod: &PodFacts<'_>, info: &NodeInfo) -> Option<Reason> {
    let conflict = pod.ports.iter().any(|(proto, ip, port)| {
        info.used_ports.keys().any(|(p2, ip2, port2)| {
            proto == p2 && port == port2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    });
    conflict.then_some(Reason::NodePorts)
}

/// NodeResourcesFit: the pod's requests fit into allocatable minus what the node's pods
/// (bound and assumed) request; every short resource is a reason.
pub fn resources_fit(pod: &PodFacts<'_>, info: &NodeInfo) -> Vec<Reason> {
    let (alloc, used, want) = (&info.allocatable, &info.requested, &pod.requests);
    let mut reasons = Vec::new();
    if used.pods + 1 > alloc.pods {
        reasons.push(Reason::TooManyPods);
    }
    if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > alloc.milli_cpu {
        reasons.push(Reason::Insufficient("cpu"));
    }
    if want.memory > 0 && used.memory + want.memory > alloc.memory {
        reasons.push(Reason::Insufficient("memory"));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(extra_spec: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": extra_spec,
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "2"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    fn pod(spec: Value) -> Pod {
        let mut spec = spec;
        spec.as_object_mut()
            .unwrap()
            .entry("containers")
            .or_insert(json!([{"name": "c"}]));
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}))
            .unwrap()
    }

    fn requesting(cpu: &str, mem: &str) -> Pod {
        pod(json!({"containers": [{"name": "c",
            "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}))
    }

    #[test]
    fn ready_condition_is_required() {
        let mut n = node(json!({}));
        assert_eq!(node_ready(&n), None);
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert_eq!(node_ready(&n), Some(Reason::NotReady));
        n.status.as_mut().unwrap().conditions = None;
        assert_eq!(node_ready(&n), Some(Reason::NotReady));
    }

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let n = node(json!({"unschedulable": true}));
        let p = pod(json!({}));
        assert_eq!(
            node_unschedulable(&PodFacts::new(&p), &n),
            Some(Reason::Unschedulable)
        );
        let p = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable",
            "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(node_unschedulable(&PodFacts::new(&p), &n), None);
        assert_eq!(
            node_unschedulable(&PodFacts::new(&p), &node(json!({}))),
            None
        );
    }

    #[test]
    fn node_name_must_match_when_set() {
        let n = node(json!({}));
        assert_eq!(node_name(&pod(json!({"nodeName": "n1"})), &n), None);
        assert_eq!(
            node_name(&pod(json!({"nodeName": "n2"})), &n),
            Some(Reason::NodeName)
        );
        assert_eq!(node_name(&pod(json!({})), &n), None);
    }

    #[test]
    fn taints_need_tolerations() {
        let n = node(json!({"taints": [
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
        ]}));
        let check = |p: Pod| taint_toleration(&PodFacts::new(&p), &n);
        assert_eq!(
            check(pod(json!({}))),
            Some(Reason::UntoleratedTaint("dedicated".into(), "gpu".into()))
        );
        assert_eq!(
            Reason::UntoleratedTaint("dedicated".into(), "gpu".into()).to_string(),
            "node(s) had untolerated taint {dedicated: gpu}"
        );
        let ok = [
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
        ];
        for t in ok {
            assert_eq!(check(pod(json!({"tolerations": [t.clone()]}))), None, "{t}");
        }
        let bad = [
            json!({"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            json!({"key": "other", "operator": "Exists"}),
        ];
        for t in bad {
            assert!(
                check(pod(json!({"tolerations": [t.clone()]}))).is_some(),
                "{t}"
            );
        }
    }

    #[test]
    fn node_affinity_filter_uses_selector() {
        let n = node(json!({}));
        assert_eq!(
            node_affinity(&pod(json!({"nodeSelector": {"zone": "a"}})), &n),
            None
        );
        assert_eq!(
            node_affinity(&pod(json!({"nodeSelector": {"zone": "b"}})), &n),
            Some(Reason::NodeAffinity)
        );
    }

    #[test]
    fn host_ports_conflict_by_protocol_ip_and_port() {
        let mut info = NodeInfo::from_node(node(json!({})));
        info.add_pod(&pod(json!({"containers": [{"name": "c", "ports": [
            {"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]}]})));
        let with = |port: Value| pod(json!({"containers": [{"name": "c", "ports": [port]}]}));
        let check = |p: Pod| node_ports(&PodFacts::new(&p), &info);
        assert_eq!(
            check(with(json!({"containerPort": 1, "hostPort": 8080}))),
            Some(Reason::NodePorts)
        );
        assert_eq!(
            check(with(
                json!({"containerPort": 1, "hostPort": 8080, "hostIP": "10.0.0.2"})
            )),
            None
        );
        assert_eq!(
            check(with(
                json!({"containerPort": 1, "hostPort": 8080, "protocol": "UDP"})
            )),
            None
        );
        assert_eq!(check(with(json!({"containerPort": 8080}))), None);
    }

    #[test]
    fn resources_fit_counts_bound_pods() {
        let mut info = NodeInfo::from_node(node(json!({})));
        let big = requesting("1500m", "1Gi");
        assert!(resources_fit(&PodFacts::new(&big), &info).is_empty());
        info.add_pod(&big);
        let again = requesting("1", "1Gi");
        assert_eq!(
            resources_fit(&PodFacts::new(&again), &info),
            vec![Reason::Insufficient("cpu")]
        );
        let mem = requesting("100m", "4Gi");
        assert_eq!(
            resources_fit(&PodFacts::new(&mem), &info),
            vec![Reason::Insufficient("memory")]
        );
        let mut second = requesting("0", "0");
        second.metadata.name = Some("second".into());
        info.add_pod(&second);
        assert_eq!(
            resources_fit(&PodFacts::new(&pod(json!({}))), &info),
            vec![Reason::TooManyPods]
        );
    }

    #[test]
    fn run_filters_reports_the_first_failing_filter() {
        let n = node(json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}));
        let info = NodeInfo::from_node(n);
        let p = requesting("8", "1Gi");
        assert_eq!(
            run_filters(&PodFacts::new(&p), &info),
            vec![Reason::UntoleratedTaint("k".into(), String::new())]
        );
        let p = pod(json!({"tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "8", "memory": "8Gi"}}}]}));
        assert_eq!(
            run_filters(&PodFacts::new(&p), &info),
            vec![Reason::Insufficient("cpu"), Reason::Insufficient("memory")]
        );
    }

    #[test]
    fn cached_node_flags_follow_node_updates() {
        use super::super::cache::Cache;
        let p = pod(json!({}));
        let facts = PodFacts::new(&p);
        let verdict = |cache: &Cache| run_filters(&facts, cache.node("n1").unwrap());
        let mut cache = Cache::default();
        cache.upsert_node(node(json!({"unschedulable": true})));
        assert_eq!(verdict(&cache), vec![Reason::Unschedulable]);
        cache.upsert_node(node(
            json!({"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}),
        ));
        assert_eq!(
            verdict(&cache),
            vec![Reason::UntoleratedTaint("k".into(), "v".into())]
        );
        // Upstream's order: NodeName is checked before TaintToleration.
        let elsewhere = pod(json!({"nodeName": "n2"}));
        assert_eq!(
            run_filters(&PodFacts::new(&elsewhere), cache.node("n1").unwrap()),
            vec![Reason::NodeName]
        );
        // A PreferNoSchedule taint is only a preference.
        cache.upsert_node(node(
            json!({"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}),
        ));
        assert_eq!(verdict(&cache), Vec::<Reason>::new());
        let not_ready: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }))
        .unwrap();
        cache.upsert_node(not_ready);
        assert_eq!(verdict(&cache), vec![Reason::NotReady]);
        cache.upsert_node(node(json!({})));
        assert_eq!(verdict(&cache), Vec::<Reason>::new());
    }
}
