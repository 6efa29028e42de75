//! ReplicaSet controller: keeps as many active pods as `spec.replicas`, creating them from the
//! template (`generateName: <rs>-`, controller owner reference) and deleting the cheapest first
//! (unscheduled, then not running, then not ready, then newest); adopts matching orphans; reports
//! status.
//!
//! Pods are listed from the apiserver (not a cache) at each reconcile, and kube-rs never runs
//! two reconciles of the same ReplicaSet at once, so a burst of events cannot make it create
//! pods it already created: the list always includes them.

use std::cmp::Reverse;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use super::workload::{self, Workload};
use super::{owner, pods, ControllerError};

/// Most pods created or deleted in one reconcile (upstream's burst limit).
const BURST: usize = 500;

/// Deletion order: lower sorts first and is deleted first.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pods::phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (assigned, phase, pods::is_ready(pod), Reverse(created))
}

/// The pods to delete to go from `active` down to `want`.
pub(crate) fn pick_victims(mut active: Vec<&Pod>, want: usize) -> Vec<&Pod> {
    active.sort_by_key(|p| deletion_rank(p));
    let excess = active.len().saturating_sub(want).min(BURST);
    active.truncate(excess);
    active
}

/// A new pod from the ReplicaSet's template.
fn pod_from_template(rs: &ReplicaSet) -> Option<Pod> {
    workload::pod_from_template(rs, rs.spec.template.as_ref()?)
}

/// The status `owned` pods give the ReplicaSet.
fn compute_status(rs: &ReplicaSet, owned: &[Pod], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.clone();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .and_then(|t| t.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let active: Vec<&Pod> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&pods::is_ready)),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    }
}

struct Ctx {
    client: Client,
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let w = Workload::of("replicaset", rs.as_ref())?;
    let spec = rs.spec.clone();
    let query = w.selector_query(&spec.selector)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.ns);
    let listed = w.list(&api, &query, "list pods of").await?;
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for pod in listed {
        match owner::controller_of(&pod.metadata) {
            Some(r) if r.uid == w.uid => owned.push(pod),
            Some(_) => {}
            None if !deleting && !pods::is_terminating(&pod) => {
                owned.push(owner::adopt(&api, rs.as_ref(), &pod).await?)
            }
            None => {}
        }
    }
    let now = Timestamp::now();
    let status = compute_status(&rs, &owned, now);
    if !deleting {
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        let active: Vec<&Pod> = owned.iter().filter(|p| pods::is_active(p)).collect();
        if active.len() < want {
            let pod = pod_from_template(&rs).ok_or_else(|| w.missing("spec.template"))?;
            let n = (want - active.len()).min(BURST);
            tracing::info!(replicaset = %w.object, count = n, "creating pods");
            let pp = PostParams::default();
            let creates = (0..n).map(|_| api.create(&pp, &pod));
            futures::future::try_join_all(creates)
                .await
                .map_err(ControllerError::kube("create pod for", w.object.clone()))?;
        } else if active.len() > want {
            let victims = pick_victims(active, want);
            tracing::info!(replicaset = %w.object, count = victims.len(), "deleting pods");
            for pod in victims {
                let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
                workload::delete_pod(&api, &w.ns, pod_name).await?;
            }
        }
    }
    if rs.status.as_ref() != Some(&status) {
        w.patch_status(
            &Api::<ReplicaSet>::namespaced(ctx.client.clone(), &w.ns),
            &status,
        )
        .await?;
    }
    Ok(workload::after_status(
        spec.min_ready_seconds,
        status.ready_replicas,
        status.available_replicas,
    ))
}

/// The controller future (runs until its watches end); `pods` is the process's shared pod
/// watch ([`super::shared_watch`]).
pub async fn run(client: Client, pods: impl futures::Stream<Item = Arc<Pod>> + Send + 'static) {
    let controller = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let controller = controller.watches_shared_stream(pods, move |pod| {
        owner::owners_of(pod.as_ref(), &store, |rs: &ReplicaSet| {
            Some(&rs.spec.selector)
        })
    });
    let ctx = Arc::new(Ctx { client });
    super::drain(
        "replicaset",
        controller.run(reconcile, super::on_error, ctx),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn scale_down_deletes_unscheduled_then_pending_then_unready_then_newest() {
        let pods = [
            pod(
                "old-ready",
                Some("n"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                Some("n"),
                "Running",
                true,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "unready",
                Some("n"),
                "Running",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n"),
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                None,
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let names = |want| -> Vec<String> {
            pick_victims(pods.iter().collect(), want)
                .iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names(1), ["unscheduled", "pending", "unready", "new-ready"]);
        assert_eq!(names(3), ["unscheduled", "pending"]);
        assert!(names(5).is_empty());
    }

    #[test]
    fn template_pods_are_owned_and_named_after_the_set() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "u1"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let p = pod_from_template(&rs).unwrap();
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.labels.unwrap()["app"], "web");
        let r = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (
                r.kind.as_str(),
                r.uid.as_str(),
                r.controller,
                r.block_owner_deletion
            ),
            ("ReplicaSet", "u1", Some(true), Some(true))
        );
        let status = compute_status(&rs, &[], Timestamp::now());
        assert_eq!((status.replicas, status.ready_replicas), (0, Some(0)));
    }
}
