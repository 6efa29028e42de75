//! The garbage collector: deletes objects whose owners are all gone, and carries out the
//! Foreground and Orphan deletions the apiserver marks with finalizers.
//!
//! Like upstream's, it works on metadata only, over every kind we serve that owns or is owned
//! (the `kinds` table). It keeps one metadata-only watch and cache (kube-rs reflector) per kind,
//! as upstream's graph builder keeps informers; a scan reads those caches (no LIST: re-listing
//! every pod after each burst of events cost more than all the other controllers together),
//! builds the owner graph by uid and then, per object:
//!
//! - all owner references point at missing owners, or at owners being deleted in the
//!   foreground: the object is deleted (Foreground itself if it owns something, so that the
//!   chain is torn down bottom-up; Background otherwise);
//! - some owners exist and others are missing: the dangling references are removed;
//! - it carries the `orphan` finalizer: the references to it are removed from its dependents,
//!   then the finalizer;
//! - it carries the `foregroundDeletion` finalizer and no dependent with
//!   `blockOwnerDeletion: true` is left: the finalizer is removed (and the apiserver removes
//!   the object).
//!
//! References to kinds outside that table (or to kinds whose cache has not finished its first
//! list) count as existing owners, so nothing is deleted on missing knowledge. An owner missing
//! from the caches is looked up live by name before anything is done about it (as upstream's
//! `isDangling` does): it may be newer than its cache and already have adopted the dependent.
//! Every write is conditional on the resourceVersion the decision was made from, so a cache
//! that trails the API makes a write fail with 409 (and the next scan decide again), never act
//! on an outdated object. Scans run when any watched kind changes (debounced) and every
//! [`RESYNC`] regardless.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::reflector::{reflector, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;

use super::{is_not_found, ControllerError};

/// Full scans happen at least this often, even without watch events.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How long a scan waits after a watch event for more to arrive.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The finalizer of a Foreground deletion (set by the apiserver).
const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an Orphan deletion (set by the apiserver).
const ORPHAN: &str = "orphan";

/// One kind the collector lists and watches.
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

fn kind<K: kube::Resource<DynamicType = ()>>(namespaced: bool) -> Kind {
    Kind {
        resource: ApiResource::erase::<K>(&()),
        namespaced,
    }
}

/// The kinds that own or are owned in this control plane.
fn kinds() -> Vec<Kind> {
    vec![
        kind::<Deployment>(true),
        kind::<ReplicaSet>(true),
        kind::<StatefulSet>(true),
        kind::<DaemonSet>(true),
        kind::<ControllerRevision>(true),
        kind::<Job>(true),
        kind::<Pod>(true),
        kind::<Service>(true),
        kind::<Endpoints>(true),
        kind::<EndpointSlice>(true),
        kind::<Lease>(true),
        kind::<Node>(false),
    ]
}

/// A kind's metadata cache; `synced` once its first list has been applied.
struct Cached {
    store: Store<PartialObjectMeta<DynamicObject>>,
    synced: Arc<AtomicBool>,
}

/// One cached object: its kind (index into the kinds) and metadata.
struct Listed {
    kind: usize,
    object: Arc<PartialObjectMeta<DynamicObject>>,
}

impl Listed {
    fn meta(&self) -> &ObjectMeta {
        &self.object.metadata
    }
}

/// What a scan decided to do to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Delete it with this propagation policy.
    Delete(PropagationPolicy),
    /// Replace its owner references with these.
    SetOwners(Vec<OwnerReference>),
    /// Replace its finalizers with these.
    SetFinalizers(Vec<String>),
}

/// What is known about the owner an owner reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// It exists and is not being deleted in the foreground.
    Solid,
    /// It exists, being deleted in the foreground: its dependents go first.
    Foreground,
    /// No object of a covered kind has the uid.
    Absent,
}

/// The pure decision for one object given its owners' states (one per owner reference),
/// whether any dependent still references it (`owns`) and whether one with
/// `blockOwnerDeletion` does (`blocked`).
pub fn decide(
    meta: &ObjectMeta,
    owner_states: &[OwnerState],
    owns: bool,
    blocked: bool,
) -> Option<Action> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let finalizers = meta.finalizers.as_deref().unwrap_or_default();
    let deleting = meta.deletion_timestamp.is_some();
    if deleting && finalizers.iter().any(|f| f == ORPHAN) && !owns {
        return Some(Action::SetFinalizers(without(finalizers, ORPHAN)));
    }
    if deleting && finalizers.iter().any(|f| f == FOREGROUND) && !blocked {
        return Some(Action::SetFinalizers(without(finalizers, FOREGROUND)));
    }
    if refs.is_empty() || deleting {
        return None;
    }
    if owner_states.iter().all(|s| *s != OwnerState::Solid) {
        let policy = if owns && owner_states.contains(&OwnerState::Foreground) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        return Some(Action::Delete(policy));
    }
    if owner_states.contains(&OwnerState::Absent) {
        let kept = refs
            .iter()
            .zip(owner_states)
            .filter(|(_, s)| **s != OwnerState::Absent)
            .map(|(r, _)| r.clone())
            .collect();
        return Some(Action::SetOwners(kept));
    }
    None
}

fn without(finalizers: &[String], f: &str) -> Vec<String> {
    finalizers.iter().filter(|x| *x != f).cloned().collect()
}

/// Runs the collector until the future is dropped.
pub async fn run(client: Client) {
    let kinds = Arc::new(kinds());
    let wake = Arc::new(Notify::new());
    let mut caches = Vec::new();
    let mut watches = tokio::task::JoinSet::new();
    for k in kinds.iter() {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), &k.resource);
        let writer = Writer::new(k.resource.clone());
        let cached = Cached {
            store: writer.as_reader(),
            synced: Arc::new(AtomicBool::new(false)),
        };
        let (wake, synced) = (Arc::clone(&wake), Arc::clone(&cached.synced));
        let kind = k.resource.kind.clone();
        let events = reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        // Dropping the set (the collector's future) stops the watches.
        watches.spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        synced.store(true, Ordering::Release);
                        wake.notify_one();
                    }
                    // The rest of a (re)list is applied at InitDone.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(watcher::Event::Apply(object)) if !may_need_collection(&object.metadata) => {}
                    Ok(_) => wake.notify_one(),
                    Err(err) => {
                        tracing::debug!(%kind, error = %err, "garbage collector watch failed; retrying")
                    }
                }
            }
        });
        caches.push(cached);
    }
    loop {
        if let Err(err) = Box::pin(scan(&client, &kinds, &caches)).await {
            tracing::warn!(error = %err, "garbage collection scan failed");
        }
        let _ = tokio::time::timeout(RESYNC, wake.notified()).await;
        // Let a burst of events (a deletion cascading) settle into one scan.
        tokio::time::sleep(DEBOUNCE).await;
    }
}

/// Whether a change to an object with this metadata can give the collector work: it has
/// owners (which may be gone) or is being deleted (its finalizers may be ours). Anything else
/// (say, a new pod without owners, one of thousands a second) cannot, so it does not wake a
/// scan; a deletion always does (the object may have been an owner), as does [`RESYNC`].
fn may_need_collection(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|r| !r.is_empty())
        || meta.deletion_timestamp.is_some()
}

fn api(client: &Client, k: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
    match ns.filter(|_| k.namespaced) {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &k.resource),
        None => Api::all_with(client.clone(), &k.resource),
    }
}

fn name_of(k: &Kind, meta: &ObjectMeta) -> String {
    format!(
        "{} {}/{}",
        k.resource.kind,
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// One pass over every covered kind's cache.
async fn scan(client: &Client, kinds: &[Kind], caches: &[Cached]) -> Result<(), ControllerError> {
    let mut objects = Vec::new();
    let mut listed = HashSet::new();
    for (i, (k, cache)) in kinds.iter().zip(caches).enumerate() {
        if !cache.synced.load(Ordering::Acquire) {
            continue;
        }
        listed.insert((k.resource.api_version.clone(), k.resource.kind.clone()));
        objects.extend(
            cache
                .store
                .state()
                .into_iter()
                .map(|object| Listed { kind: i, object }),
        );
    }
    let by_uid: HashMap<&str, &Listed> = objects
        .iter()
        .filter_map(|o| Some((o.meta().uid.as_deref()?, o)))
        .collect();
    // Per owner uid: whether any dependent references it, and whether one blocks it.
    let mut referenced: HashSet<&str> = HashSet::new();
    let mut blocking: HashSet<&str> = HashSet::new();
    for o in &objects {
        for r in o.meta().owner_references.iter().flatten() {
            referenced.insert(&r.uid);
            if r.block_owner_deletion == Some(true) {
                blocking.insert(&r.uid);
            }
        }
    }
    let mut orphaning: HashSet<&str> = HashSet::new();
    let state = |r: &OwnerReference| -> OwnerState {
        match by_uid.get(r.uid.as_str()) {
            Some(owner) => owner_state(owner.meta()),
            None if listed.contains(&(r.api_version.clone(), r.kind.clone())) => OwnerState::Absent,
            None => OwnerState::Solid,
        }
    };
    for o in &objects {
        let m = o.meta();
        if m.deletion_timestamp.is_some() && m.finalizers.iter().flatten().any(|f| f == ORPHAN) {
            orphaning.extend(m.uid.as_deref());
        }
    }
    let mut looked_up: HashMap<String, OwnerState> = HashMap::new();
    for o in &objects {
        let k = &kinds[o.kind];
        let uid = o.meta().uid.as_deref().unwrap_or("");
        // Dependents of an orphaning owner lose their reference to it first.
        let refs = o.meta().owner_references.as_deref().unwrap_or_default();
        if refs.iter().any(|r| orphaning.contains(r.uid.as_str())) {
            let kept: Vec<OwnerReference> = refs
                .iter()
                .filter(|r| !orphaning.contains(r.uid.as_str()))
                .cloned()
                .collect();
            apply(client, k, o.meta(), Action::SetOwners(kept)).await?;
            continue;
        }
        let mut states: Vec<OwnerState> = refs.iter().map(state).collect();
        for (r, st) in refs.iter().zip(states.iter_mut()) {
            if *st != OwnerState::Absent {
                continue;
            }
            // Once per owner and scan: a deleted owner's many dependents share the answer.
            *st = match looked_up.get(r.uid.as_str()) {
                Some(known) => *known,
                None => {
                    let s = live_state(client, kinds, r, o.meta().namespace.as_deref()).await;
                    looked_up.insert(r.uid.clone(), s);
                    s
                }
            };
        }
        let action = decide(
            o.meta(),
            &states,
            referenced.contains(uid),
            blocking.contains(uid),
        );
        if let Some(action) = action {
            apply(client, k, o.meta(), action).await?;
        }
    }
    Ok(())
}

/// The state of an owner the scan's lists lacked, from a live GET by name: absent only when the
/// API says not found or the name now holds another uid; any other failure counts as present,
/// so nothing is deleted on missing knowledge.
async fn live_state(
    client: &Client,
    kinds: &[Kind],
    r: &OwnerReference,
    namespace: Option<&str>,
) -> OwnerState {
    let Some(k) = kinds
        .iter()
        .find(|k| k.resource.api_version == r.api_version && k.resource.kind == r.kind)
    else {
        return OwnerState::Solid;
    };
    match api(client, k, namespace).get_metadata_opt(&r.name).await {
        Ok(Some(owner)) if owner.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
            owner_state(&owner.metadata)
        }
        Ok(_) => OwnerState::Absent,
        Err(err) => {
            tracing::debug!(owner = %r.name, error = %err, "garbage collector owner lookup failed");
            OwnerState::Solid
        }
    }
}

/// Solid, or Foreground while the owner is being deleted in the foreground.
fn owner_state(m: &ObjectMeta) -> OwnerState {
    let fg =
        m.deletion_timestamp.is_some() && m.finalizers.iter().flatten().any(|f| f == FOREGROUND);
    if fg {
        OwnerState::Foreground
    } else {
        OwnerState::Solid
    }
}

async fn apply(
    client: &Client,
    k: &Kind,
    meta: &ObjectMeta,
    action: Action,
) -> Result<(), ControllerError> {
    let name = meta.name.as_deref().unwrap_or_default();
    let api = api(client, k, meta.namespace.as_deref());
    let what = name_of(k, meta);
    tracing::info!(object = %what, ?action, "garbage collector");
    let result = match action {
        Action::Delete(policy) => api
            .delete(
                name,
                &DeleteParams {
                    propagation_policy: Some(policy),
                    preconditions: Some(Preconditions {
                        uid: meta.uid.clone(),
                        resource_version: meta.resource_version.clone(),
                    }),
                    ..DeleteParams::default()
                },
            )
            .await
            .map(|_| ())
            .map_err(ControllerError::kube("delete dependent", what.clone())),
        Action::SetOwners(refs) => api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {
                    "resourceVersion": meta.resource_version,
                    "ownerReferences": refs}})),
            )
            .await
            .map(|_| ())
            .map_err(ControllerError::kube(
                "patch ownerReferences of",
                what.clone(),
            )),
        Action::SetFinalizers(finalizers) => api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {
                    "resourceVersion": meta.resource_version,
                    "finalizers": finalizers}})),
            )
            .await
            .map(|_| ())
            .map_err(ControllerError::kube("remove finalizer of", what.clone())),
    };
    match result {
        Err(ControllerError::Kube { source, .. }) if is_not_found(&source) => Ok(()),
        // A concurrent change (409): the next scan sees the new state.
        Err(ControllerError::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 409 => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owned_or_deleting_objects_wake_a_scan() {
        assert!(!may_need_collection(&ObjectMeta::default()));
        assert!(!may_need_collection(&ObjectMeta {
            owner_references: Some(vec![]),
            ..Default::default()
        }));
        assert!(may_need_collection(&owned(&["u1"])));
        assert!(may_need_collection(&ObjectMeta {
            deletion_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }));
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn owned(uids: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            owner_references: Some(
                uids.iter()
                    .map(|u| OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: format!("rs-{u}"),
                        uid: (*u).into(),
                        ..OwnerReference::default()
                    })
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn decisions() {
        use OwnerState::*;
        let m = owned(&["a"]);
        assert_eq!(decide(&m, &[Solid], false, false), None);
        assert_eq!(
            decide(&m, &[Absent], false, false),
            Some(Action::Delete(PropagationPolicy::Background))
        );
        assert_eq!(
            decide(&m, &[Foreground], true, true),
            Some(Action::Delete(PropagationPolicy::Foreground))
        );
        assert_eq!(
            decide(&m, &[Foreground], false, false),
            Some(Action::Delete(PropagationPolicy::Background))
        );
        let two = owned(&["a", "b"]);
        let Some(Action::SetOwners(kept)) = decide(&two, &[Solid, Absent], false, false) else {
            panic!("the dangling reference is dropped")
        };
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].uid, "a");
        assert_eq!(decide(&ObjectMeta::default(), &[], false, false), None);

        let mut fg = ObjectMeta {
            deletion_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            finalizers: Some(vec![FOREGROUND.into(), "x/y".into()]),
            ..ObjectMeta::default()
        };
        assert_eq!(decide(&fg, &[], true, true), None);
        assert_eq!(
            decide(&fg, &[], true, false),
            Some(Action::SetFinalizers(vec!["x/y".into()]))
        );
        fg.finalizers = Some(vec![ORPHAN.into()]);
        assert_eq!(decide(&fg, &[], true, false), None);
        assert_eq!(
            decide(&fg, &[], false, false),
            Some(Action::SetFinalizers(vec![]))
        );
    }
}
