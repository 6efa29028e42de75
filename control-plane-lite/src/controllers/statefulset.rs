//! StatefulSet controller: pods with stable names `<set>-0 … <set>-(N-1)` (hostname = pod name,
//! subdomain = `spec.serviceName`), created in order under `OrderedReady` or all at once under
//! `Parallel`, recreated under the same name when deleted or failed, and updated to a new
//! template with `RollingUpdate` (highest ordinal first, down to `partition`) or `OnDelete`.
//! The decisions are in `statefulset_plan.rs`; this file reads the pods and carries them out.
//!
//! Revisions: a revision is `<set>-<hash>` with the same template hash as Deployments'
//! `pod-template-hash`, set on pods as `controller-revision-hash`, and kept as a
//! ControllerRevision of that name (`history.rs`), so `kubectl rollout history|undo
//! statefulset` work. A pod below the partition that is deleted comes back at the current
//! revision, made from that revision's template, as upstream recreates it.
//!
//! Not implemented: `volumeClaimTemplates` (the cluster has no PersistentVolumeClaims; they
//! are ignored, with a warning in the log, and pods get no claim volumes), `spec.ordinals`,
//! `minReadySeconds` beyond availability counting, adoption of orphan pods, and
//! `persistentVolumeClaimRetentionPolicy`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use super::statefulset_plan::{self, PodState, Policy, Step, Strategy};
use super::workload::{self, Workload};
use super::{history, owner, pods, rollout, ControllerError};

/// Label with the pod's own name, so a Service can select exactly one set member.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label with the revision the pod was created at.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The update revision of `sts`: `<set>-<pod template hash>`.
pub fn update_revision(sts: &StatefulSet) -> String {
    let spec = &sts.spec;
    // Unset and 0 are the same count; the status always writes one, so both must hash alike.
    let collision = sts
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .filter(|c| *c != 0);
    format!(
        "{}-{}",
        sts.metadata.name.as_deref().unwrap_or_default(),
        rollout::pod_template_hash(&spec.template, collision)
    )
}

/// The pod for `ordinal` of `sts` at `revision` (the set's current template); `None` if the
/// set has no name or uid yet.
fn pod_for(sts: &StatefulSet, ordinal: usize, revision: &str) -> Option<Pod> {
    pod_at(sts, ordinal, revision, &sts.spec.template)
}

/// The pod for `ordinal` of `sts` from `template`, the template of `revision`.
fn pod_at(
    sts: &StatefulSet,
    ordinal: usize,
    revision: &str,
    template: &PodTemplateSpec,
) -> Option<Pod> {
    let spec = &sts.spec;
    let name = format!("{}-{ordinal}", sts.metadata.name.as_deref()?);
    let mut pod = workload::pod_from_template(sts, template)?;
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let pod_spec = pod.spec.get_or_insert_with(Default::default);
    pod_spec.hostname = Some(name);
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    Some(pod)
}

/// The `controller-revision-hash` a pod was created at (empty for pods without one).
pub(super) fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map_or("", String::as_str)
}

fn state_of(pod: &Pod) -> PodState {
    PodState {
        revision: revision_of(pod).into(),
        terminating: pods::is_terminating(pod),
        finished: matches!(pods::phase(pod), "Failed" | "Succeeded"),
        healthy: pods::phase(pod) == "Running" && pods::is_ready(pod),
    }
}

/// The status the set's `pods` (by ordinal) give it. `currentRevision` moves to the update
/// revision once every wanted pod is at it and ready, as upstream's `completeRollingUpdate`.
fn compute_status(
    sts: &StatefulSet,
    pods_by_ordinal: &BTreeMap<usize, Pod>,
    update_revision: &str,
    now: Timestamp,
) -> StatefulSetStatus {
    let spec = &sts.spec;
    let old = sts.status.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut current_revision = old
        .current_revision
        .clone()
        .unwrap_or_else(|| update_revision.to_string());
    let all: Vec<&Pod> = pods_by_ordinal.values().collect();
    let count = |f: &dyn Fn(&Pod) -> bool| all.iter().filter(|p| f(p)).count() as i32;
    let running = |p: &Pod| pods::phase(p) == "Running";
    let live_at = |rev: &str, p: &Pod| !pods::is_terminating(p) && revision_of(p) == rev;
    let replicas = count(&|_| true);
    let ready = count(&|p| running(p) && pods::is_ready(p));
    let updated = count(&|p| live_at(update_revision, p));
    let wanted = spec.replicas.unwrap_or(1);
    if updated == wanted && ready == wanted && replicas == wanted {
        current_revision = update_revision.to_string();
    }
    StatefulSetStatus {
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| {
            running(p) && pods::is_available(p, min_ready, now)
        })),
        current_replicas: Some(count(&|p| live_at(&current_revision, p))),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_revision.to_string()),
        observed_generation: sts.metadata.generation,
        collision_count: Some(old.collision_count.unwrap_or(0)),
        conditions: old.conditions,
    }
}

struct Ctx {
    client: Client,
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let w = Workload::of("statefulset", sts.as_ref())?;
    let spec = sts.spec.clone();
    let query = w.selector_query(&spec.selector)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.ns);
    let owned = w.list_owned(&api, &query, "list pods of").await?;
    let by_ordinal: BTreeMap<usize, Pod> = owned
        .into_iter()
        .filter_map(|p| {
            let ord = statefulset_plan::ordinal_of(&w.name, p.metadata.name.as_deref()?)?;
            Some((ord, p))
        })
        .collect();
    let update_revision = update_revision(&sts);
    if sts.metadata.deletion_timestamp.is_none() {
        // Revisions are `<set>-<hash>`; the history is kept by hash.
        let prefix = format!("{}-", w.name);
        let hash = update_revision
            .strip_prefix(&prefix)
            .unwrap_or(&update_revision);
        let live = by_ordinal
            .values()
            .filter_map(|p| revision_of(p).strip_prefix(&prefix))
            .map(str::to_owned)
            .collect();
        history::sync(
            &Api::namespaced(ctx.client.clone(), &w.ns),
            &w,
            sts.as_ref(),
            &query,
            (&spec.template, hash),
            spec.revision_history_limit
                .unwrap_or(history::DEFAULT_HISTORY_LIMIT),
            &live,
        )
        .await?;
        if spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            tracing::warn!(statefulset = %w.object, "volumeClaimTemplates ignored: this cluster has no PersistentVolumeClaims");
        }
        let policy = match spec.pod_management_policy.as_deref() {
            Some("Parallel") => Policy::Parallel,
            _ => Policy::OrderedReady,
        };
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let strategy = match strategy.type_.as_deref() {
            Some("OnDelete") => Strategy::OnDelete,
            _ => Strategy::RollingUpdate {
                partition: strategy
                    .rolling_update
                    .and_then(|r| r.partition)
                    .unwrap_or(0)
                    .max(0) as usize,
            },
        };
        let states = by_ordinal
            .iter()
            .map(|(&ord, p)| (ord, state_of(p)))
            .collect();
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        for step in statefulset_plan::plan(replicas, policy, strategy, &update_revision, &states) {
            match step {
                Step::Create(ord) => {
                    // Below the partition a pod comes back at the current revision, from its
                    // ControllerRevision, as upstream recreates it.
                    let current = sts.status.as_ref().and_then(|s| s.current_revision.clone());
                    let old = match (strategy, current) {
                        (Strategy::RollingUpdate { partition }, Some(cur))
                            if ord < partition && cur != update_revision =>
                        {
                            history::template_of(&Api::namespaced(ctx.client.clone(), &w.ns), &cur)
                                .await?
                                .map(|t| (cur, t))
                        }
                        _ => None,
                    };
                    let (revision, pod) = match &old {
                        Some((rev, template)) => (rev.as_str(), pod_at(&sts, ord, rev, template)),
                        None => (
                            update_revision.as_str(),
                            pod_for(&sts, ord, &update_revision),
                        ),
                    };
                    let pod = pod.ok_or_else(|| w.missing("metadata.uid"))?;
                    tracing::info!(statefulset = %w.object, ordinal = ord, %revision, "creating pod");
                    api.create(&PostParams::default(), &pod).await.map_err(
                        ControllerError::kube("create pod", format!("{}/{}-{ord}", w.ns, w.name)),
                    )?;
                }
                Step::Delete(ord) => {
                    let pod_name = format!("{}-{ord}", w.name);
                    tracing::info!(statefulset = %w.object, pod = %pod_name, "deleting pod");
                    workload::delete_pod(&api, &w.ns, &pod_name).await?;
                }
            }
        }
    }
    let now = Timestamp::now();
    let status = compute_status(&sts, &by_ordinal, &update_revision, now);
    if sts.status.as_ref() != Some(&status) {
        w.patch_status(
            &Api::<StatefulSet>::namespaced(ctx.client.clone(), &w.ns),
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
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_shared_stream(pods, |pod| {
        owner::controller_ref_of::<StatefulSet>(&pod.metadata)
    });
    let ctx = Arc::new(Ctx { client });
    super::drain(
        "statefulset",
        controller.run(reconcile, super::on_error, ctx),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sts(image: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "default", "uid": "u1", "generation": 2},
            "spec": {"replicas": 2, "serviceName": "db-headless",
                     "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn pods_have_stable_identity() {
        let set = sts("i:1");
        let rev = update_revision(&set);
        assert!(rev.starts_with("db-") && rev.len() > 3);
        let pod = pod_for(&set, 1, &rev).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("db-1"));
        assert_eq!(pod.metadata.generate_name, None);
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "db-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[REVISION_LABEL], rev);
        assert_eq!(labels["app"], "db");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("db-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("db-headless"));
        let r = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str(), r.controller),
            ("StatefulSet", "u1", Some(true))
        );
    }

    #[test]
    fn revision_follows_the_template_only() {
        let a = sts("i:1");
        let mut b = sts("i:1");
        b.spec.replicas = Some(5);
        assert_eq!(update_revision(&a), update_revision(&b));
        assert_ne!(update_revision(&a), update_revision(&sts("i:2")));
        let mut c = sts("i:1");
        c.status = Some(StatefulSetStatus {
            collision_count: Some(1),
            ..Default::default()
        });
        assert_ne!(update_revision(&a), update_revision(&c));
        c.status.as_mut().unwrap().collision_count = Some(0);
        assert_eq!(
            update_revision(&a),
            update_revision(&c),
            "0 is the unset count"
        );
    }

    #[test]
    fn status_counts_revisions_and_completes_the_rollout() {
        let old_set = sts("i:1");
        let old_rev = update_revision(&old_set);
        let mut set = sts("i:2");
        set.status = Some(StatefulSetStatus {
            current_revision: Some(old_rev.clone()),
            ..Default::default()
        });
        let new_rev = update_revision(&set);
        let ready_pod = |set: &StatefulSet, ord, rev: &str| {
            let mut p = pod_for(set, ord, rev).unwrap();
            p.status = serde_json::from_value(json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}))
            .unwrap();
            p
        };
        let now = Timestamp::now();
        let mixed = BTreeMap::from([
            (0, ready_pod(&old_set, 0, &old_rev)),
            (1, ready_pod(&set, 1, &new_rev)),
        ]);
        let s = compute_status(&set, &mixed, &new_rev, now);
        assert_eq!(s.replicas, 2);
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(2));
        assert_eq!((s.current_replicas, s.updated_replicas), (Some(1), Some(1)));
        assert_eq!(s.current_revision.as_deref(), Some(old_rev.as_str()));
        assert_eq!(s.update_revision.as_deref(), Some(new_rev.as_str()));
        assert_eq!(
            (s.observed_generation, s.collision_count),
            (Some(2), Some(0))
        );
        let done = BTreeMap::from([
            (0, ready_pod(&set, 0, &new_rev)),
            (1, ready_pod(&set, 1, &new_rev)),
        ]);
        let s = compute_status(&set, &done, &new_rev, now);
        assert_eq!(s.current_revision.as_deref(), Some(new_rev.as_str()));
        assert_eq!((s.current_replicas, s.updated_replicas), (Some(2), Some(2)));
    }
}
