//! Revision history of DaemonSets and StatefulSets as `apps/v1 ControllerRevision`s, the
//! objects `kubectl rollout history|undo daemonset|statefulset` read.
//!
//! One revision per pod template the set has had: name `<set>-<template hash>`, labels the
//! template's labels (so the set's selector finds it, as kubectl looks it up) plus
//! `controller-revision-hash`, and as data the patch that restores the template
//! (`{"spec": {"template": {…, "$patch": "replace"}}}`, upstream's format, which kubectl
//! applies as a strategic merge patch on undo). The current template's revision has the highest
//! number: a template that comes back (an undo) gets its old revision renumbered, as upstream
//! does. Beyond `revisionHistoryLimit` (default 10) the oldest revisions whose hash no live pod
//! carries are deleted.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde_json::json;

use super::statefulset::REVISION_LABEL;
use super::workload::Workload;
use super::{owner, ControllerError};

/// Upstream's default `revisionHistoryLimit`.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// The revision data that restores `template`.
pub fn data_of(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    t["$patch"] = json!("replace");
    json!({ "spec": { "template": t } })
}

/// The pod template the revision `name` restores (`None` if there is no such revision or its
/// data holds no template).
pub async fn template_of(
    api: &Api<ControllerRevision>,
    name: &str,
) -> Result<Option<PodTemplateSpec>, ControllerError> {
    let Some(rev) = api
        .get_opt(name)
        .await
        .map_err(ControllerError::kube("read revision", name.to_string()))?
    else {
        return Ok(None);
    };
    let mut template = rev.data.0["spec"]["template"].clone();
    if let Some(t) = template.as_object_mut() {
        t.remove("$patch");
    }
    Ok(serde_json::from_value(template).ok())
}

/// A revision's number (0 when unset).
fn number(r: &ControllerRevision) -> i64 {
    r.revision.unwrap_or(0)
}

/// Makes the revision of `template` (hash `hash`) the newest of `owner`'s history and prunes
/// the history to `limit` old revisions, keeping those whose hash is in `live`. Returns the
/// current revision's number.
pub async fn sync<O>(
    api: &Api<ControllerRevision>,
    w: &Workload,
    owner: &O,
    selector_query: &str,
    (template, hash): (&PodTemplateSpec, &str),
    limit: i32,
    live: &HashSet<String>,
) -> Result<i64, ControllerError>
where
    O: Resource<DynamicType = ()>,
{
    let mut history = w
        .list_owned(api, selector_query, "list revisions of")
        .await?;
    history.sort_by_key(number);
    let name = format!("{}-{hash}", w.name);
    let max = history.iter().map(number).max().unwrap_or(0);
    let current = match history
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(&name))
    {
        Some(r) if number(r) == max => max,
        Some(_) => {
            // The template came back: its revision becomes the newest again.
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "revision": max + 1 })),
            )
            .await
            .map_err(ControllerError::kube(
                "renumber revision of",
                w.object.clone(),
            ))?;
            max + 1
        }
        None => {
            let mut labels: BTreeMap<String, String> = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_LABEL.into(), hash.into());
            let annotations = owner
                .meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/change-cause"))
                .map(|c| BTreeMap::from([("kubernetes.io/change-cause".to_string(), c.clone())]));
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(w.ns.clone()),
                    labels: Some(labels),
                    annotations,
                    owner_references: owner::controller_ref(owner).map(|r| vec![r]),
                    ..ObjectMeta::default()
                },
                data: RawExtension(data_of(template)),
                revision: Some(max + 1),
            };
            tracing::info!(object = %w.object, revision = max + 1, %name, "new revision");
            match api.create(&PostParams::default(), &revision).await {
                Ok(_) => {}
                // Made by an earlier pass whose list did not see it yet: the next pass renumbers.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    return Err(ControllerError::kube(
                        "create revision of",
                        w.object.clone(),
                    )(e))
                }
            }
            max + 1
        }
    };
    let old: Vec<&ControllerRevision> = history
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(&name))
        .filter(|r| {
            let h = r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL));
            !h.is_some_and(|h| live.contains(h))
        })
        .collect();
    let excess = old.len().saturating_sub(limit.max(0) as usize);
    for r in old.into_iter().take(excess) {
        let n = r.metadata.name.as_deref().unwrap_or_default();
        match api.delete(n, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(ControllerError::kube("prune revision of", w.object.clone())(e)),
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_replaces_the_whole_template() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]}
        }))
        .unwrap();
        let d = data_of(&t);
        assert_eq!(d["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "i:1"
        );
    }
}
