//! What the workload controllers (ReplicaSet, Deployment, Job, DaemonSet, StatefulSet) share:
//! the identity of the object being reconciled, its selector as a list query, listing the
//! children it controls, stamping a pod out of its template, deleting a pod and writing status.
//! Each of these was written out in every controller before; keeping one copy keeps their error
//! messages and their "already gone is fine" rules the same.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::{owner, selector, ControllerError};

/// The fields every workload reconcile needs, checked once: an object without them cannot own
/// anything (no uid for owner references, no namespace for its pods).
#[derive(Debug, Clone)]
pub struct Workload {
    /// `<kind> <namespace>/<name>`, for logs and errors.
    pub object: String,
    /// `metadata.namespace`.
    pub ns: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, what owned children's controller reference points at.
    pub uid: String,
}

impl Workload {
    /// The identity of `obj`, described as `kind` (`replicaset`, `job`, ...) in errors.
    pub fn of<K: Resource>(kind: &str, obj: &K) -> Result<Self, ControllerError> {
        let object = format!("{kind} {}", super::key(obj));
        let meta = obj.meta();
        let field = |v: &Option<String>, name| {
            v.clone().ok_or_else(|| ControllerError::MissingField {
                object: object.clone(),
                field: name,
            })
        };
        Ok(Self {
            ns: field(&meta.namespace, "metadata.namespace")?,
            name: field(&meta.name, "metadata.name")?,
            uid: field(&meta.uid, "metadata.uid")?,
            object,
        })
    }

    /// The error for a field this object lacks.
    pub fn missing(&self, field: &'static str) -> ControllerError {
        ControllerError::MissingField {
            object: self.object.clone(),
            field,
        }
    }

    /// `sel` as a `labelSelector` query; an empty selector is refused, as it would select every
    /// pod in the namespace.
    pub fn selector_query(&self, sel: &LabelSelector) -> Result<String, ControllerError> {
        selector::to_query(sel)
            .and_then(|q| {
                if q.is_empty() {
                    Err("empty selector".into())
                } else {
                    Ok(q)
                }
            })
            .map_err(|reason| ControllerError::InvalidSelector {
                object: self.object.clone(),
                reason,
            })
    }

    /// Objects in `api` matching `query` (owned or not: adoption needs the orphans too);
    /// `action` names the list in errors (`list pods of`).
    pub async fn list<K>(
        &self,
        api: &Api<K>,
        query: &str,
        action: &'static str,
    ) -> Result<Vec<K>, ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        Ok(api
            .list(&ListParams::default().labels(query))
            .await
            .map_err(ControllerError::kube(action, self.object.clone()))?
            .items)
    }

    /// Objects in `api` matching `query` whose controller is this object.
    pub async fn list_owned<K>(
        &self,
        api: &Api<K>,
        query: &str,
        action: &'static str,
    ) -> Result<Vec<K>, ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let mut items = self.list(api, query, action).await?;
        items.retain(|o| owner::is_controlled_by(o.meta(), &self.uid));
        Ok(items)
    }

    /// Merge-patches `status` into the object's status subresource.
    pub async fn patch_status<K, S>(&self, api: &Api<K>, status: &S) -> Result<(), ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        api.patch_status(
            &self.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(ControllerError::kube(
            "update status of",
            self.object.clone(),
        ))?;
        Ok(())
    }
}

/// A pod from `template` controlled by `owner`, in the owner's namespace, named
/// `generateName: <owner>-`; `None` if the owner has no name or uid yet.
pub fn pod_from_template<K: Resource<DynamicType = ()>>(
    owner: &K,
    template: &PodTemplateSpec,
) -> Option<Pod> {
    let meta = owner.meta();
    let tmeta = template.metadata.clone().unwrap_or_default();
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", meta.name.as_deref()?)),
            namespace: meta.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner::controller_ref(owner)?]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// What a workload controller returns once status is written: pods that are ready but not yet
/// for `minReadySeconds` become available without any event, so look again after that long;
/// otherwise wait for a change.
pub fn after_status(
    min_ready_seconds: Option<i32>,
    ready: Option<i32>,
    available: Option<i32>,
) -> Action {
    let min_ready = min_ready_seconds.unwrap_or(0);
    if min_ready > 0 && ready != available {
        return Action::requeue(std::time::Duration::from_secs(min_ready as u64));
    }
    Action::await_change()
}

/// Deletes pod `name` from `api` (namespace `ns`, for the error); a pod already gone is fine.
pub async fn delete_pod(api: &Api<Pod>, ns: &str, name: &str) -> Result<(), ControllerError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if super::is_not_found(&e) => Ok(()),
        Err(e) => Err(ControllerError::kube("delete pod", format!("{ns}/{name}"))(
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;

    #[test]
    fn identity_and_selector_errors_name_the_object() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns"}}))
        .unwrap();
        let err = Workload::of("job", &job).unwrap_err().to_string();
        assert_eq!(err, "job ns/j has no metadata.uid");
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"}}))
        .unwrap();
        let w = Workload::of("job", &job).unwrap();
        assert_eq!(
            (w.ns.as_str(), w.name.as_str(), w.uid.as_str()),
            ("ns", "j", "u")
        );
        let err = w.selector_query(&LabelSelector::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid selector on job ns/j: empty selector"
        );
        let sel: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "x"}})).unwrap();
        assert_eq!(w.selector_query(&sel).unwrap(), "app=x");
    }

    #[test]
    fn template_pods_are_owned_and_named_after_the_owner() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"}}))
        .unwrap();
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"a": "1"}, "annotations": {"n": "v"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}))
        .unwrap();
        let pod = pod_from_template(&job, &template).unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("j-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(pod.metadata.labels.unwrap()["a"], "1");
        assert_eq!(pod.metadata.annotations.unwrap()["n"], "v");
        let r = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!((r.kind.as_str(), r.uid.as_str()), ("Job", "u"));
        assert_eq!(pod.spec, template.spec);
        assert!(pod_from_template(&Job::default(), &template).is_none());
    }
}
