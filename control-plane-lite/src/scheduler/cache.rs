//! The scheduler's in-memory view of the cluster: nodes and the pods bound (or assumed bound)
//! to each, with running sums of their requests, host ports and owners. Scheduling reads it
//! directly instead of re-listing per pod; a pod counts on its node as soon as the scheduler
//! decides ("assumes") it, so a burst never overcommits while binds are still in flight.

use super::filters;
use super::resources::{pod_requests, Resources};
use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A pod's identity in the cache and queue: `namespace/name`.
pub type PodKey = String;

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> PodKey {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A host port a pod takes on its node: (protocol, host IP, port).
pub type HostPort = (String, String, i32);

/// The host ports a pod asks for; an empty host IP means every address (`0.0.0.0`).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&hp| hp > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                port,
            ))
        })
        .collect()
}

/// The uid of a pod's controller ownerReference (its ReplicaSet, Job, …), for spreading.
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// What inter-pod affinity needs to know of a pod on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMeta {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its required pod anti-affinity terms (other pods must keep away from it).
    pub anti: Vec<PodAffinityTerm>,
}

impl PodMeta {
    /// The facts of `pod`.
    pub fn new(pod: &Pod) -> Self {
        Self {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            anti: pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
        }
    }
}

/// What one pod contributes to its node's sums.
#[derive(Debug, Clone)]
struct PodEntry {
    requests: Resources,
    non_zero: Resources,
    ports: Vec<HostPort>,
    owner: Option<String>,
    meta: Arc<PodMeta>,
}

impl PodEntry {
    fn new(pod: &Pod) -> Self {
        Self {
            requests: pod_requests(pod, false),
            non_zero: pod_requests(pod, true),
            ports: host_ports(pod),
            owner: controller_uid(pod).map(str::to_string),
            meta: Arc::new(PodMeta::new(pod)),
        }
    }
}

/// One node and the sums over the pods on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node object, `None` while only pods naming it have been seen.
    pub node: Option<Arc<Node>>,
    /// The node's allocatable resources.
    pub allocatable: Resources,
    /// Sum of the requests of the pods on it (pods = their count).
    pub requested: Resources,
    /// Sum with non-zero defaults, for the resource scores.
    pub non_zero_requested: Resources,
    /// Host ports in use, with how many pods use each.
    pub used_ports: HashMap<HostPort, usize>,
    /// Pods per controller uid.
    pub owners: HashMap<String, usize>,
    /// The node's Ready condition is True (kept here, next to the sums, because a decision
    /// visits hundreds of nodes and reaching into each node object's conditions cost more than
    /// the rest of the filters).
    pub ready: bool,
    /// The node is cordoned or has NoSchedule/NoExecute taints: only then do the filters that
    /// read `spec` need to run.
    pub spec_rules: bool,
    /// The pods' namespaces, labels and required anti-affinity, for inter-pod affinity.
    pub metas: HashMap<PodKey, Arc<PodMeta>>,
    pods: HashSet<PodKey>,
}

impl NodeInfo {
    /// A node with nothing on it (for tests and new nodes).
    pub fn from_node(node: Node) -> Self {
        let mut info = NodeInfo::default();
        info.set_node(Arc::new(node));
        info
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable =
            Resources::from_list(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
        self.ready = filters::node_ready(&node).is_none();
        self.spec_rules = node.spec.as_ref().is_some_and(|s| {
            s.unschedulable == Some(true)
                || s.taints.iter().flatten().any(filters::restricts_scheduling)
        });
        self.node = Some(node);
    }

    /// The node's name ("" if only pods named it so far).
    pub fn name(&self) -> &str {
        self.node
            .as_ref()
            .and_then(|n| n.metadata.name.as_deref())
            .unwrap_or_default()
    }

    /// How many pods are on the node.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    fn add(&mut self, key: &PodKey, entry: &PodEntry) {
        if !self.pods.insert(key.clone()) {
            return;
        }
        self.requested.add(&entry.requests);
        self.non_zero_requested.add(&entry.non_zero);
        for port in &entry.ports {
            *self.used_ports.entry(port.clone()).or_default() += 1;
        }
        if let Some(owner) = &entry.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
        self.metas.insert(key.clone(), entry.meta.clone());
    }

    fn remove(&mut self, key: &PodKey, entry: &PodEntry) {
        if !self.pods.remove(key) {
            return;
        }
        self.requested.sub(&entry.requests);
        self.non_zero_requested.sub(&entry.non_zero);
        for port in &entry.ports {
            if let Some(n) = self.used_ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    self.used_ports.remove(port);
                }
            }
        }
        if let Some(owner) = &entry.owner {
            if let Some(n) = self.owners.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.owners.remove(owner);
                }
            }
        }
        self.metas.remove(key);
    }

    /// Accounts `pod` on this node (test helper and what assuming does).
    pub fn add_pod(&mut self, pod: &Pod) {
        self.add(&pod_key(pod), &PodEntry::new(pod));
    }
}

/// Where a cached pod is and why.
#[derive(Debug, Clone)]
struct Placement {
    node: String,
    entry: PodEntry,
    /// Assumed by us and not yet seen bound by the watch.
    assumed: bool,
}

/// Nodes and the pods on them; the scheduling loop owns it (no locks).
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<PodKey, Placement>,
    /// Cached pods with required pod anti-affinity: while 0, pods without inter-pod terms of
    /// their own skip that plugin without looking at any node.
    anti_pods: usize,
}

/// Whether `new` differs from `old` in anything a filter or score reads (labels, taints,
/// cordon, allocatable, condition statuses); heartbeats that only move timestamps do not
/// count, so they do not wake every unschedulable pod.
pub fn node_changed_for_scheduling(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| {
        let s = n.spec.as_ref();
        (
            s.and_then(|s| s.unschedulable),
            s.and_then(|s| s.taints.clone()),
        )
    };
    let conditions = |n: &Node| -> Vec<(String, String)> {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect()
    };
    let allocatable = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    old.metadata.labels != new.metadata.labels
        || spec(old) != spec(new)
        || conditions(old) != conditions(new)
        || allocatable(old) != allocatable(new)
}

/// A pod holds node resources until it ends.
fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Cache {
    /// Adds or replaces a node; returns whether that may let more pods fit (a new node, or a
    /// change [`node_changed_for_scheduling`] sees).
    pub fn upsert_node(&mut self, node: Node) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        let info = self.nodes.entry(name).or_default();
        let changed = info
            .node
            .as_deref()
            .is_none_or(|old| node_changed_for_scheduling(old, &node));
        info.set_node(Arc::new(node));
        changed
    }

    /// Forgets a node (its pods stay accounted under its name until they go).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Applies a pod seen by the watch: a bound, running pod is accounted on its node (this
    /// confirms an assumption); a finished one is dropped.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node {
            Some(node) if !node.is_empty() && !is_terminal(pod) => {
                self.remove_key(&key);
                self.place(key, node, PodEntry::new(pod), false);
            }
            // Not bound yet: keep an assumption, the watch just has not seen the binding.
            _ if !is_terminal(pod) && self.is_assumed(&key) => {}
            _ => self.remove_key(&key),
        }
    }

    /// Drops a deleted pod.
    pub fn remove_pod(&mut self, key: &PodKey) {
        self.remove_key(key);
    }

    /// Counts `pod` on `node` right away, before its binding is written.
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let key = pod_key(pod);
        self.remove_key(&key);
        self.place(key, node.to_string(), PodEntry::new(pod), true);
    }

    /// Undoes [`Self::assume`] after a failed bind (no-op if the watch already saw it bound).
    pub fn forget(&mut self, key: &PodKey) {
        if self.is_assumed(key) {
            self.remove_key(key);
        }
    }

    /// Whether `key` is assumed and not yet confirmed by the watch.
    pub fn is_assumed(&self, key: &PodKey) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// Whether the cache has `key` on some node (bound or assumed).
    pub fn has_pod(&self, key: &PodKey) -> bool {
        self.pods.contains_key(key)
    }

    /// Whether some cached pod has required pod anti-affinity.
    pub fn has_anti_affinity(&self) -> bool {
        self.anti_pods > 0
    }

    /// The nodes that exist (node object seen), in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.node.is_some())
    }

    /// The nodes that exist, in name order starting at `start` and wrapping around.
    pub fn nodes_from<'a>(&'a self, start: Option<&'a str>) -> impl Iterator<Item = &'a NodeInfo> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let start = start.unwrap_or("");
        self.nodes
            .range::<str, _>((Included(start), Unbounded))
            .chain(self.nodes.range::<str, _>((Unbounded, Excluded(start))))
            .map(|(_, n)| n)
            .filter(|n| n.node.is_some())
    }

    /// How many node entries the cache holds: the nodes that exist plus, rarely, deleted ones
    /// whose pods are still accounted. Sizes the search; not a count to report.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Names of the nodes that exist.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes().map(NodeInfo::name)
    }

    /// Keys of every cached pod.
    pub fn pod_keys(&self) -> impl Iterator<Item = &PodKey> {
        self.pods.keys()
    }

    /// One node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|n| n.node.is_some())
    }

    fn place(&mut self, key: PodKey, node: String, entry: PodEntry, assumed: bool) {
        self.anti_pods += usize::from(!entry.meta.anti.is_empty());
        self.nodes
            .entry(node.clone())
            .or_default()
            .add(&key, &entry);
        self.pods.insert(
            key,
            Placement {
                node,
                entry,
                assumed,
            },
        );
    }

    fn remove_key(&mut self, key: &PodKey) {
        if let Some(p) = self.pods.remove(key) {
            self.anti_pods -= usize::from(!p.entry.meta.anti.is_empty());
            if let Some(info) = self.nodes.get_mut(&p.node) {
                info.remove(key, &p.entry);
                if info.node.is_none() && info.pods.is_empty() {
                    self.nodes.remove(&p.node);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
        }))
        .unwrap()
    }

    fn pod(name: &str, node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "u1", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                "ports": [{"containerPort": 80, "hostPort": 8080}],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1"));
        let p = pod("a", None, "Pending");
        cache.assume(&p, "n1");
        let info = cache.node("n1").unwrap();
        assert_eq!(info.requested.milli_cpu, 500);
        assert_eq!(info.requested.pods, 1);
        assert_eq!(info.owners.get("u1"), Some(&1));
        assert!(info
            .used_ports
            .contains_key(&("TCP".into(), "0.0.0.0".into(), 8080)));
        // A stale unbound update from the watch keeps the assumption.
        cache.upsert_pod(&p);
        assert!(cache.is_assumed(&"ns/a".to_string()));
        // The watch sees it bound: confirmed, counted once.
        cache.upsert_pod(&pod("a", Some("n1"), "Pending"));
        assert!(!cache.is_assumed(&"ns/a".to_string()));
        assert_eq!(cache.node("n1").unwrap().requested.pods, 1);
        // Forget after confirmation does nothing.
        cache.forget(&"ns/a".to_string());
        assert_eq!(cache.node("n1").unwrap().requested.pods, 1);
        // Finished pods free their node.
        cache.upsert_pod(&pod("a", Some("n1"), "Succeeded"));
        let info = cache.node("n1").unwrap();
        assert_eq!(info.requested, Resources::default());
        assert!(info.used_ports.is_empty() && info.owners.is_empty());
    }

    #[test]
    fn heartbeats_are_not_scheduling_changes() {
        let mut cache = Cache::default();
        let mut n = node("n1");
        n.status.as_mut().unwrap().conditions = Some(
            serde_json::from_value(json!([{"type": "Ready", "status": "True",
                "lastHeartbeatTime": "2024-01-01T00:00:00Z"}]))
            .unwrap(),
        );
        assert!(cache.upsert_node(n.clone()), "a new node");
        let mut beat = n.clone();
        beat.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time =
            serde_json::from_value(json!("2024-01-01T00:00:10Z")).unwrap();
        assert!(!cache.upsert_node(beat.clone()));
        let mut labelled = beat.clone();
        labelled.metadata.labels = Some([("zone".to_string(), "a".to_string())].into());
        assert!(cache.upsert_node(labelled));
        let mut not_ready = beat;
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert!(cache.upsert_node(not_ready));
    }

    #[test]
    fn forget_undoes_an_assumption() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1"));
        cache.assume(&pod("a", None, "Pending"), "n1");
        cache.forget(&"ns/a".to_string());
        assert_eq!(cache.node("n1").unwrap().requested, Resources::default());
    }

    #[test]
    fn pods_of_unknown_nodes_wait_for_the_node() {
        let mut cache = Cache::default();
        cache.upsert_pod(&pod("a", Some("n2"), "Running"));
        assert_eq!(cache.nodes().count(), 0);
        cache.upsert_node(node("n2"));
        assert_eq!(cache.node("n2").unwrap().requested.pods, 1);
        cache.remove_node("n2");
        assert!(cache.node("n2").is_none());
        cache.remove_pod(&"ns/a".to_string());
        assert!(cache.nodes.is_empty());
    }
}
