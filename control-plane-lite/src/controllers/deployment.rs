//! Deployment controller: one ReplicaSet per pod template (`<deployment>-<pod-template-hash>`,
//! label `pod-template-hash`), rolled out with RollingUpdate (maxSurge/maxUnavailable) or
//! Recreate, with revision annotations `kubectl rollout history/undo` read, old ReplicaSets
//! beyond `revisionHistoryLimit` deleted, and the status `kubectl rollout status` waits on.
//!
//! ReplicaSets are listed from the apiserver at each reconcile; the rollout arithmetic is in
//! `rollout.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use serde_json::json;

use super::rollout::{self, RsCounts};
use super::workload::Workload;
use super::{owner, ControllerError};

/// Revision of a ReplicaSet (and of its Deployment, the newest one's).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had before a rollback made it newest again.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Label tying a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Copied to ReplicaSets so `kubectl rollout history` shows it.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn counts(rs: &ReplicaSet) -> RsCounts {
    let spec = rs.spec.replicas.unwrap_or(1);
    let status = rs.status.as_ref();
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    RsCounts {
        spec,
        available: available.min(spec),
        pods: status.map_or(spec, |s| s.replicas.max(spec)),
    }
}

struct Ctx {
    client: Client,
}

/// What one reconcile works with.
struct Rollout<'a> {
    d: &'a Deployment,
    object: String,
    rs_api: Api<ReplicaSet>,
}

impl Rollout<'_> {
    async fn scale(
        &self,
        rs: &mut ReplicaSet,
        replicas: i32,
        max_replicas: i32,
    ) -> Result<(), ControllerError> {
        if rs.spec.replicas == Some(replicas) {
            return Ok(());
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let desired = self.d.spec.replicas.unwrap_or(1).to_string();
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max_replicas.to_string()}},
            "spec": {"replicas": replicas}
        });
        tracing::info!(deployment = %self.object, replicaset = %name, replicas, "scaling replicaset");
        *rs = self
            .rs_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(ControllerError::kube("scale replicaset", name.clone()))?;
        Ok(())
    }

    /// Creates the ReplicaSet for the current template at `revision` with `replicas`.
    async fn create_new(
        &self,
        hash: &str,
        revision: i64,
        replicas: i32,
        max_replicas: i32,
    ) -> Result<ReplicaSet, ControllerError> {
        let d = self.d;
        let mut template = d.spec.template.clone();
        let tmeta = template.metadata.get_or_insert_with(Default::default);
        tmeta
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.into());
        let mut sel = d.spec.selector.clone();
        sel.match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.into());
        let mut annotations = BTreeMap::from([
            (REVISION.to_string(), revision.to_string()),
            (
                DESIRED_REPLICAS.to_string(),
                d.spec.replicas.unwrap_or(1).to_string(),
            ),
            (MAX_REPLICAS.to_string(), max_replicas.to_string()),
        ]);
        if let Some(cause) = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHANGE_CAUSE))
        {
            annotations.insert(CHANGE_CAUSE.into(), cause.clone());
        }
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels: tmeta.labels.clone(),
                annotations: Some(annotations),
                owner_references: owner::controller_ref(d).map(|r| vec![r]),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: d.spec.min_ready_seconds,
                selector: sel,
                template: Some(template),
            },
            status: None,
        };
        tracing::info!(deployment = %self.object, replicaset = %name, revision, "creating new replicaset");
        self.rs_api
            .create(&PostParams::default(), &rs)
            .await
            .map_err(ControllerError::kube("create replicaset", name))
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let w = Workload::of("deployment", d.as_ref())?;
    let query = w.selector_query(&d.spec.selector)?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &w.ns);
    let mut owned = Vec::new();
    for rs in w.list(&rs_api, &query, "list replicasets of").await? {
        match owner::controller_of(&rs.metadata) {
            Some(r) if r.uid == w.uid => owned.push(rs),
            // Orphans matching the selector are adopted, as upstream does (e.g. after
            // `kubectl delete deployment --cascade=orphan` and a re-create).
            None if d.metadata.deletion_timestamp.is_none()
                && rs.metadata.deletion_timestamp.is_none() =>
            {
                owned.push(owner::adopt(&rs_api, d.as_ref(), &rs).await?)
            }
            _ => {}
        }
    }
    owned.sort_by_key(revision);
    let ro = Rollout {
        d: &d,
        object: w.object.clone(),
        rs_api: rs_api.clone(),
    };
    let replicas = d.spec.replicas.unwrap_or(1);
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let rolling = strategy.rolling_update.unwrap_or_default();
    let (surge, max_unavailable) = if recreate {
        (0, replicas)
    } else {
        rollout::resolve_fenceposts(
            rolling.max_surge.as_ref(),
            rolling.max_unavailable.as_ref(),
            replicas,
        )
    };
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = rollout::pod_template_hash(&d.spec.template, collision);
    // Like upstream, the new ReplicaSet is the one whose template equals the Deployment's
    // (ignoring the hash label): after `kubectl rollout undo` that is the old set again.
    let new_idx = owned
        .iter()
        .position(|rs| same_template(rs, &d.spec.template))
        .or_else(|| {
            owned.iter().position(|rs| {
                rs.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(POD_TEMPLATE_HASH))
                    == Some(&hash)
            })
        });
    let mut new_rs = new_idx.map(|i| owned.remove(i));
    let mut old = owned;
    let max_old_rev = old.iter().map(revision).max().unwrap_or(0);
    let paused = d.spec.paused.unwrap_or(false);
    let mut created = false;

    if !paused && d.metadata.deletion_timestamp.is_none() {
        // The ReplicaSet of the current template, created or made the newest revision.
        match &mut new_rs {
            None if recreate
                && (old.iter().any(|rs| rs.spec.replicas != Some(0)) || any_active(&old)) => {}
            None => {
                let initial = if recreate {
                    replicas
                } else {
                    let all: Vec<RsCounts> = old.iter().map(counts).collect();
                    rollout::new_rs_replicas(replicas, surge, RsCounts::settled(0, 0), &all)
                };
                new_rs = Some(
                    ro.create_new(&hash, max_old_rev + 1, initial, replicas + surge)
                        .await?,
                );
                created = true;
            }
            Some(rs) if revision(rs) <= max_old_rev => {
                let mut history: Vec<String> = rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION_HISTORY))
                    .map(|h| h.split(',').map(String::from).collect())
                    .unwrap_or_default();
                history.push(revision(rs).to_string());
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                let patch = json!({"metadata": {"annotations": {
                    REVISION: (max_old_rev + 1).to_string(), REVISION_HISTORY: history.join(",")}}});
                *rs = rs_api
                    .patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(ControllerError::kube(
                        "bump revision of replicaset",
                        rs_name,
                    ))?;
            }
            Some(_) => {}
        }
        if recreate {
            for rs in old.iter_mut() {
                ro.scale(rs, 0, replicas).await?;
            }
            if let Some(new) = new_rs.as_mut().filter(|_| !any_active(&old)) {
                ro.scale(new, replicas, replicas).await?;
            }
        } else if let Some(new) = new_rs.as_mut() {
            let mut all: Vec<RsCounts> = old.iter().map(counts).collect();
            all.push(counts(new));
            let target = rollout::new_rs_replicas(replicas, surge, counts(new), &all);
            ro.scale(new, target, replicas + surge).await?;
            let olds: Vec<RsCounts> = old.iter().map(counts).collect();
            let next = rollout::old_rs_replicas(replicas, max_unavailable, counts(new), &olds);
            for (rs, n) in old.iter_mut().zip(next) {
                ro.scale(rs, n, replicas + surge).await?;
            }
        }
        cleanup_history(&ro, &mut old, d.spec.revision_history_limit.unwrap_or(10)).await?;
    }

    sync_revision_annotation(&ctx.client, &d, new_rs.as_ref()).await?;
    let status = compute_status(&d, new_rs.as_ref(), &old, max_unavailable, created);
    if d.status.as_ref() != Some(&status) {
        w.patch_status(
            &Api::<Deployment>::namespaced(ctx.client.clone(), &w.ns),
            &status,
        )
        .await?;
    }
    // A stalled rollout changes nothing that would wake us: look again at its deadline.
    Ok(match progress_deadline(&d.spec, Some(&status)) {
        Some(deadline) => {
            let left = deadline.duration_since(Timestamp::now());
            let secs = left.as_secs().max(0) as u64 + 1;
            Action::requeue(std::time::Duration::from_secs(secs))
        }
        None => Action::await_change(),
    })
}

/// Whether the ReplicaSet's pod template is `template` plus its `pod-template-hash` label.
fn same_template(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let Some(mut t) = rs.spec.template.clone() else {
        return false;
    };
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    rollout::normalized(&t) == rollout::normalized(template)
}

/// Whether any of `rs` still has active pods.
fn any_active(rs: &[ReplicaSet]) -> bool {
    rs.iter()
        .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
}

/// Deletes the oldest fully scaled-down old ReplicaSets beyond `limit`.
async fn cleanup_history(
    ro: &Rollout<'_>,
    old: &mut Vec<ReplicaSet>,
    limit: i32,
) -> Result<(), ControllerError> {
    let idle: Vec<usize> = (0..old.len())
        .filter(|&i| {
            old[i].spec.replicas == Some(0)
                && old[i].status.as_ref().is_none_or(|s| s.replicas == 0)
        })
        .collect();
    let excess = idle.len().saturating_sub(limit.max(0) as usize);
    // `old` is sorted by revision, so the first idle ones are the oldest.
    for &i in idle.iter().take(excess).rev() {
        let rs_name = old[i].metadata.name.clone().unwrap_or_default();
        tracing::info!(deployment = %ro.object, replicaset = %rs_name, "deleting old replicaset beyond revisionHistoryLimit");
        match ro.rs_api.delete(&rs_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if super::is_not_found(&e) => {}
            Err(e) => return Err(ControllerError::kube("delete old replicaset", rs_name)(e)),
        }
        old.remove(i);
    }
    Ok(())
}

/// Copies the new ReplicaSet's revision onto the Deployment.
async fn sync_revision_annotation(
    client: &Client,
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
) -> Result<(), ControllerError> {
    let Some(rev) = new_rs.map(revision).filter(|r| *r > 0) else {
        return Ok(());
    };
    let current = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION));
    if current.map(String::as_str) == Some(rev.to_string().as_str()) {
        return Ok(());
    }
    let (ns, name) = (
        d.metadata.namespace.clone().unwrap_or_default(),
        d.metadata.name.clone().unwrap_or_default(),
    );
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REVISION: rev.to_string()}}})),
        )
        .await
        .map_err(ControllerError::kube(
            "annotate revision of deployment",
            format!("{ns}/{name}"),
        ))?;
    Ok(())
}

/// The `Progressing` reason `kubectl rollout status` fails on.
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// The `Progressing` condition of `status`.
fn progressing_condition(status: Option<&DeploymentStatus>) -> Option<&DeploymentCondition> {
    status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_.as_deref() == Some("Progressing")))
}

/// When the rollout with `status` runs out of time: the last progress plus
/// `progressDeadlineSeconds` (default 600); `None` when paused, finished or already timed out
/// (nothing to wait for).
fn progress_deadline(
    spec: &DeploymentSpec,
    status: Option<&DeploymentStatus>,
) -> Option<Timestamp> {
    if spec.paused == Some(true) {
        return None;
    }
    let c = progressing_condition(status)?;
    if c.status.as_deref() != Some("True") || c.reason.as_deref() == Some("NewReplicaSetAvailable")
    {
        return None;
    }
    let last = c.last_update_time.as_ref()?.0;
    let secs = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
    last.checked_add(std::time::Duration::from_secs(secs.max(0) as u64))
        .ok()
}

/// A condition, keeping the old timestamps when nothing about it changed.
fn condition(
    d: &Deployment,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let now = Time(Timestamp::now());
    let prev = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_.as_deref() == Some(type_)));
    match prev {
        Some(p)
            if p.status.as_deref() == Some(status)
                && p.reason.as_deref() == Some(reason)
                && p.message.as_deref() == Some(&message) =>
        {
            p.clone()
        }
        _ => DeploymentCondition {
            type_: Some(type_.into()),
            status: Some(status.into()),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: match prev {
                Some(p) if p.status.as_deref() == Some(status) => p.last_transition_time.clone(),
                _ => Some(now),
            },
        },
    }
}

fn compute_status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    max_unavailable: i32,
    created: bool,
) -> DeploymentStatus {
    let replicas = d.spec.replicas.unwrap_or(1);
    let all = || new_rs.into_iter().chain(old.iter());
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all().map(f).sum::<i32>();
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let total = sum(&|rs| status_of(rs).replicas);
    let spec_total = sum(&|rs| rs.spec.replicas.unwrap_or(0));
    let updated = new_rs.map_or(0, |rs| status_of(rs).replicas);
    let ready = sum(&|rs| status_of(rs).ready_replicas.unwrap_or(0));
    let available = sum(&|rs| status_of(rs).available_replicas.unwrap_or(0));
    let available_cond = if available >= replicas - max_unavailable {
        condition(
            d,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            d,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let new_name = new_rs
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let complete =
        new_rs.is_some() && updated == replicas && total == replicas && available >= replicas;
    let before = d.status.clone().unwrap_or_default();
    let before_old = before.replicas.unwrap_or(0) - before.updated_replicas.unwrap_or(0);
    // Upstream's DeploymentProgressing: more pods updated, ready or available, or fewer old.
    let made_progress = updated > before.updated_replicas.unwrap_or(0)
        || ready > before.ready_replicas.unwrap_or(0)
        || available > before.available_replicas.unwrap_or(0)
        || total - updated < before_old;
    let progressing = if complete {
        condition(
            d,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if created {
        condition(
            d,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_name}\""),
        )
    } else if made_progress {
        let mut c = condition(
            d,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        );
        c.last_update_time = Some(Time(Timestamp::now()));
        c
    } else if let Some(timed_out) = progressing_condition(d.status.as_ref())
        .filter(|c| c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED))
    {
        // Timed out stays timed out until the rollout moves again.
        timed_out.clone()
    } else if progress_deadline(&d.spec, d.status.as_ref()).is_some_and(|t| Timestamp::now() >= t) {
        condition(
            d,
            "Progressing",
            "False",
            PROGRESS_DEADLINE_EXCEEDED,
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        let prev = progressing_condition(d.status.as_ref())
            .filter(|c| c.status.as_deref() == Some("True"));
        match prev {
            // No progress and no deadline yet: the condition (and its clock) stays.
            Some(p) if p.reason.as_deref() != Some("NewReplicaSetAvailable") => p.clone(),
            _ => condition(
                d,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            ),
        }
    };
    DeploymentStatus {
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((spec_total - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: Some(vec![available_cond, progressing]),
        ..Default::default()
    }
}

/// The controller future (runs until its watches end).
pub async fn run(client: Client) {
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    // `watches` with full objects, not `owns`: `owns` uses a metadata-only watch
    // (PartialObjectMetadata), which our apiserver answers with 406. Orphan ReplicaSets wake
    // the Deployments selecting them, which adopt them.
    let controller = controller.watches(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
        move |rs| owner::owners_of(&rs, &store, |d: &Deployment| Some(&d.spec.selector)),
    );
    let ctx = Arc::new(Ctx { client });
    super::drain(
        "deployment",
        controller.run(reconcile, super::on_error, ctx),
    )
    .await;
}
