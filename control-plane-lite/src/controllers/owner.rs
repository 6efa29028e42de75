//! Owner references: the controller link from a child (Pod, ReplicaSet, EndpointSlice) to the
//! object that manages it, used for adoption and for mapping child events to owners.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::reflector::ObjectRef;
use kube::Resource;

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
