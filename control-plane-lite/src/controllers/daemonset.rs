//! DaemonSet controller: one pod per eligible node. A node is eligible when it matches the
//! template's `nodeSelector` and every NoSchedule/NoExecute taint on it is tolerated (by the
//! template's tolerations or the ones upstream adds to every daemon pod). Pods are created
//! unbound with a required node affinity `matchFields metadata.name In [node]`, as upstream, and
//! the scheduler places them; pods on nodes that are gone or no longer eligible are deleted.
//! A node whose pod is still terminating gets its replacement only once that pod is gone, so
//! one node never runs the daemon twice (except during a `maxSurge` update).
//!
//! Template updates: pods carry the template hash as `controller-revision-hash`; under
//! `RollingUpdate` (the default) old pods are replaced while at most `maxUnavailable` nodes
//! lack an available pod (`daemonset_update.rs`), under `OnDelete` only when deleted.
//!
//! Every template gets a ControllerRevision (`history.rs`), so `kubectl rollout history` and
//! `kubectl rollout undo daemonset` work.
//!
//! With `maxSurge` above 0 the new pod starts beside the old one and the old one goes once the
//! new one is available (`daemonset_update::surge`).
//!
//! Not implemented: `nodeAffinity` in the template when choosing nodes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::daemonset_update::{self, Slot, SlotPod, SurgeSlot};
use super::statefulset::{self, REVISION_LABEL};
use super::workload::{self, Workload};
use super::{history, owner, pods, rollout, ControllerError};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Taint, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

/// Tolerations upstream adds to every daemon pod, so node conditions do not evict or block it.
fn default_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether `t` tolerates `taint` (the scheduler's rule).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let exists = t.operator.as_deref() == Some("Exists");
    match t.key.as_deref() {
        None | Some("") => exists,
        Some(k) if k != taint.key => false,
        Some(_) => {
            exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Whether a daemon pod with `tolerations` and `node_selector` belongs on `node`.
pub fn eligible(
    node: &Node,
    node_selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The node a daemon pod is for: its `nodeName`, or the `matchFields metadata.name` affinity.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required.node_selector_terms.iter().find_map(|term| {
        term.match_fields.iter().flatten().find_map(|f| {
            (f.key == "metadata.name" && f.operator == "In")
                .then(|| f.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

/// Required affinity pinning a pod to `node` by name.
fn node_affinity(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Ctx {
    client: Client,
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let w = Workload::of("daemonset", ds.as_ref())?;
    let spec = ds.spec.clone();
    let query = w.selector_query(&spec.selector)?;
    let template = spec.template.clone();
    let pod_spec = template
        .spec
        .clone()
        .ok_or_else(|| w.missing("spec.template.spec"))?;
    let mut tolerations = pod_spec.tolerations.clone().unwrap_or_default();
    for t in default_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    let node_selector = pod_spec.node_selector.clone().unwrap_or_default();
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::kube("list nodes for", w.object.clone()))?
        .items;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.ns);
    let owned = w.list_owned(&api, &query, "list pods of").await?;
    let hash = rollout::pod_template_hash(&template, None);
    let live: HashSet<String> = owned
        .iter()
        .map(statefulset::revision_of)
        .map(str::to_owned)
        .collect();
    history::sync(
        &Api::namespaced(ctx.client.clone(), &w.ns),
        &w,
        ds.as_ref(),
        &query,
        (&template, &hash),
        spec.revision_history_limit
            .unwrap_or(history::DEFAULT_HISTORY_LIMIT),
        &live,
    )
    .await?;
    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    let mut terminating: HashSet<String> = HashSet::new();
    for pod in &owned {
        if let Some(n) = target_node(pod) {
            if pods::is_terminating(pod) {
                terminating.insert(n);
            } else {
                by_node.entry(n).or_default().push(pod);
            }
        }
    }
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut delete: Vec<&Pod> = Vec::new();
    let mut create: Vec<String> = Vec::new();
    let (mut desired, mut current, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0);
    let mut slots: Vec<Slot> = Vec::new();
    let mut surge_slots: Vec<SurgeSlot> = Vec::new();
    let fits: Vec<bool> = nodes
        .iter()
        .map(|n| eligible(n, &node_selector, &tolerations))
        .collect();
    let eligible_nodes = fits.iter().filter(|f| **f).count() as i32;
    let surge_budget = daemonset_update::max_surge(spec.update_strategy.as_ref(), eligible_nodes);
    for (node, fits) in nodes.iter().zip(fits) {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let mut here = by_node.remove(&node_name).unwrap_or_default();
        if !fits {
            delete.extend(here);
            continue;
        }
        desired += 1;
        // A failed daemon pod is replaced; extra pods on one node go (the oldest stays).
        let (failed, mut live): (Vec<&Pod>, Vec<&Pod>) =
            here.drain(..).partition(|p| pods::phase(p) == "Failed");
        delete.extend(failed);
        live.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        let slot_pod = |p: &Pod| SlotPod {
            name: p.metadata.name.clone().unwrap_or_default(),
            updated: statefulset::revision_of(p) == hash,
            available: pods::is_available(p, min_ready, now),
        };
        if !live.is_empty() {
            current += 1;
            ready += i32::from(live.iter().any(|p| pods::is_ready(p)));
            available += i32::from(live.iter().any(|p| pods::is_available(p, min_ready, now)));
            updated += i32::from(live.iter().any(|p| statefulset::revision_of(p) == hash));
        }
        if surge_budget > 0 {
            // Surge: one old and one new pod may share the node; further ones go.
            let (new, old): (Vec<&Pod>, Vec<&Pod>) = live
                .into_iter()
                .partition(|p| statefulset::revision_of(p) == hash);
            delete.extend(new.iter().skip(1).chain(old.iter().skip(1)).copied());
            let slot = SurgeSlot {
                node: node_name.clone(),
                old: old.first().map(|p| slot_pod(p)),
                new: new.first().map(|p| slot_pod(p)),
            };
            if slot.old.is_some() || slot.new.is_some() || !terminating.contains(&node_name) {
                surge_slots.push(slot);
            }
            continue;
        }
        match live.split_first() {
            None => {
                slots.push(Slot { pod: None });
                if !terminating.contains(&node_name) {
                    create.push(node_name);
                }
            }
            Some((keep, extra)) => {
                delete.extend(extra.iter().copied());
                slots.push(Slot {
                    pod: Some(slot_pod(keep)),
                });
            }
        }
    }
    if surge_budget > 0 {
        let steps = daemonset_update::surge(&surge_slots, surge_budget);
        create.extend(steps.create);
        delete.extend(owned.iter().filter(|p| {
            steps
                .delete
                .iter()
                .any(|n| p.metadata.name.as_ref() == Some(n))
        }));
    } else if let Some(max) =
        daemonset_update::max_unavailable(spec.update_strategy.as_ref(), desired)
    {
        let names = daemonset_update::pods_to_delete(&slots, max);
        delete.extend(
            owned
                .iter()
                .filter(|p| names.iter().any(|n| p.metadata.name.as_ref() == Some(n))),
        );
    }
    // Pods for nodes that no longer exist.
    let misscheduled = by_node.values().map(Vec::len).sum::<usize>() as i32;
    delete.extend(by_node.into_values().flatten());
    for node_name in &create {
        let mut pod = workload::pod_from_template(ds.as_ref(), &template)
            .ok_or_else(|| w.missing("metadata.uid"))?;
        let mut spec = pod_spec.clone();
        spec.affinity
            .get_or_insert_with(Default::default)
            .node_affinity = node_affinity(node_name).node_affinity;
        spec.tolerations = Some(tolerations.clone());
        pod.spec = Some(spec);
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(REVISION_LABEL.into(), hash.clone());
        tracing::info!(daemonset = %w.object, node = %node_name, "creating daemon pod");
        api.create(&PostParams::default(), &pod)
            .await
            .map_err(ControllerError::kube(
                "create daemon pod for",
                format!("{} on node {node_name}", w.object),
            ))?;
    }
    for pod in delete {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        tracing::info!(daemonset = %w.object, pod = %pod_name, "deleting daemon pod");
        workload::delete_pod(&api, &w.ns, pod_name).await?;
    }
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        updated_number_scheduled: Some(updated),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        observed_generation: ds.metadata.generation,
        ..ds.status.clone().unwrap_or_default()
    };
    if ds.status.as_ref() != Some(&status) {
        w.patch_status(
            &Api::<DaemonSet>::namespaced(ctx.client.clone(), &w.ns),
            &status,
        )
        .await?;
    }
    if min_ready > 0 && ready != available {
        return Ok(Action::requeue(std::time::Duration::from_secs(
            min_ready as u64,
        )));
    }
    Ok(Action::await_change())
}

/// The controller future (runs until its watches end); `pods` is the process's shared pod
/// watch ([`super::shared_watch`]).
pub async fn run(client: Client, pods: impl futures::Stream<Item = Arc<Pod>> + Send + 'static) {
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let controller = controller
        .watches_shared_stream(pods, |pod| {
            owner::controller_ref_of::<DaemonSet>(&pod.metadata)
        })
        // Any node change can change every DaemonSet's set of eligible nodes.
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_node| {
                store
                    .state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    let ctx = Arc::new(Ctx { client });
    super::drain("daemonset", controller.run(reconcile, super::on_error, ctx)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints}}),
        )
        .unwrap()
    }

    #[test]
    fn eligibility_follows_selector_and_taints() {
        let sel: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        let tol: Toleration =
            serde_json::from_value(json!({"key": "dedicated", "operator": "Exists"})).unwrap();
        let plain = node(json!({"disk": "ssd"}), json!([]));
        let tainted = node(
            json!({"disk": "ssd"}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        );
        let prefer = node(
            json!({"disk": "ssd"}),
            json!([{"key": "dedicated", "effect": "PreferNoSchedule"}]),
        );
        assert!(eligible(&plain, &sel, &[]));
        assert!(!eligible(&node(json!({}), json!([])), &sel, &[]));
        assert!(!eligible(&tainted, &sel, &default_tolerations()));
        assert!(eligible(&tainted, &sel, &[tol]));
        assert!(
            eligible(&prefer, &sel, &[]),
            "PreferNoSchedule does not block"
        );
        let unsched = node(
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert!(eligible(&unsched, &BTreeMap::new(), &default_tolerations()));
    }

    #[test]
    fn pods_are_pinned_by_match_fields() {
        let pod = Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                affinity: Some(node_affinity("n7")),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
    }
}
