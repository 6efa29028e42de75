//! Owner references: the controller link from a child (Pod, ReplicaSet, EndpointSlice) to the
//! object that manages it, used for adoption and for mapping child events to owners.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::ControllerError;

/// The controller owner reference of `meta`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A controller reference to `owner` that blocks the owner's foreground deletion, as upstream
/// controllers set; `None` if the owner has no name or uid yet.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let meta = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The `K` that controls the object with `meta` (same namespace), for mapping child events to
/// the owner to reconcile.
pub fn controller_ref_of<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> Option<ObjectRef<K>> {
    let r = controller_of(meta).filter(|r| r.kind == K::kind(&()))?;
    let obj = ObjectRef::new(&r.name);
    Some(match &meta.namespace {
        Some(ns) => obj.within(ns),
        None => obj,
    })
}

/// Makes `owner` the controller of the orphan `child` (a merge patch of its owner references,
/// guarded by its resourceVersion so a concurrent adoption by another owner wins cleanly).
pub async fn adopt<K, O>(api: &Api<K>, owner: &O, child: &K) -> Result<K, ControllerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    O: Resource<DynamicType = ()>,
{
    let meta = child.meta();
    let name = meta.name.clone().unwrap_or_default();
    let mut refs = meta.owner_references.clone().unwrap_or_default();
    refs.extend(controller_ref(owner));
    let patch = json!({"metadata": {"ownerReferences": refs,
        "resourceVersion": meta.resource_version}});
    tracing::info!(
        child = %format!("{} {}/{}", K::kind(&()), meta.namespace.as_deref().unwrap_or(""), name),
        owner = %owner.meta().name.as_deref().unwrap_or(""),
        "adopting orphan"
    );
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(ControllerError::kube("adopt", name))
}

/// The owners (from `store`) a child event concerns: its controller, or for an orphan every
/// owner in its namespace whose selector (`selector_of`) matches its labels.
pub fn owners_of<O, C>(
    child: &C,
    store: &Store<O>,
    selector_of: impl Fn(&O) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<ObjectRef<O>>
where
    O: Resource<DynamicType = ()> + Clone,
    C: Resource,
{
    let meta = child.meta();
    match controller_of(meta) {
        Some(_) => controller_ref_of(meta).into_iter().collect(),
        None => store
            .state()
            .iter()
            .filter(|o| o.meta().namespace == meta.namespace)
            .filter(|o| {
                selector_of(o).is_some_and(|s| super::selector::matches(s, meta.labels.as_ref()))
            })
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect(),
    }
}
