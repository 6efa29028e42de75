//! DELETE: immediate removal, graceful deletion of pods on nodes, and finalizers.
//!
//! As in Kubernetes, an object is only removed at once when nothing has to happen first.
//! A pod bound to a node gets `metadata.deletionTimestamp` (now plus its grace period) and
//! `deletionGracePeriodSeconds` and stays until the node agent, having stopped its
//! containers, deletes it again with `gracePeriodSeconds=0`. Any object with
//! `metadata.finalizers` gets a `deletionTimestamp` and stays until an update empties the
//! finalizers ([`removed_by_update`]). Each marking is an update (a MODIFIED watch event), the
//! removal a delete (DELETED). Namespaces are in `namespaces.rs`.
//!
//! `propagationPolicy: Foreground` (`Orphan`) adds the `foregroundDeletion` (`orphan`)
//! finalizer, which the garbage collector controller removes once the blocking dependents are
//! gone (the owner references to the object are removed from its dependents).

use hyper::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::http::{self, Body};
use super::namespaces;
use super::object;
use super::path::{object_key, Target};
use super::read::get_object;
use super::resources::Resource;
use crate::storage::{KeyValue, Storage, StorageError};

/// The grace period of a pod whose spec sets none (Kubernetes' default).
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What a DELETE does to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Remove it now.
    Remove,
    /// Store this marked version (deletion pending).
    Mark(Value),
    /// Deletion is already pending with no shorter grace period: leave it.
    Unchanged,
}

/// The RFC 3339 time `seconds` from now.
fn in_seconds(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(super::defaults::now_seconds() + seconds)
        .unwrap_or_default()
        .to_string()
}

/// Whether `object` lists finalizers.
pub fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Whether `object` is marked for deletion.
pub fn is_deleting(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

/// The grace period a DELETE of `current` gets: pods bound to a node and still running wait
/// for their agent; everything else has none.
fn grace_period(r: &Resource, current: &Value, requested: Option<i64>) -> i64 {
    let spec = &current["spec"];
    let bound = spec["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let finished = matches!(
        current["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if r.plural != "pods" || !bound || finished {
        return 0;
    }
    requested
        .or_else(|| spec["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0)
}

/// Decides what a DELETE with the requested grace period does to `current`.
pub fn plan(r: &Resource, current: &Value, requested: Option<i64>) -> Plan {
    let grace = grace_period(r, current, requested);
    if grace == 0 && !has_finalizers(current) {
        return Plan::Remove;
    }
    let meta = &current["metadata"];
    if is_deleting(current) {
        let pending = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
        if grace >= pending {
            return Plan::Unchanged;
        }
    }
    let mut marked = current.clone();
    marked["metadata"]["deletionTimestamp"] = json!(in_seconds(grace));
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    Plan::Mark(marked)
}

/// Whether an update left `object` with nothing holding its pending deletion, so that the
/// update removes it instead (Kubernetes' `shouldDeleteDuringUpdate`).
pub fn removed_by_update(object: &Value) -> bool {
    is_deleting(object)
        && !has_finalizers(object)
        && object["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
}

/// Refuses finalizers added to an object whose deletion is pending.
pub fn check_new_finalizers(r: &Resource, current: &Value, new: &Value) -> Result<(), ApiError> {
    if !is_deleting(current) {
        return Ok(());
    }
    let old: Vec<&Value> = current["metadata"]["finalizers"]
        .as_array()
        .map(|f| f.iter().collect())
        .unwrap_or_default();
    let added = new["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| !old.contains(&f));
    if !added {
        return Ok(());
    }
    Err(ApiError::Invalid {
        group: r.group,
        kind: r.kind,
        name: current["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .into(),
        causes: vec![super::error::FieldCause {
            field: "metadata.finalizers".into(),
            reason: "FieldValueForbidden",
            message: "Forbidden: no new finalizers can be added if the object is being deleted"
                .into(),
        }],
    })
}

fn conflict(r: &Resource, name: &str) -> ApiError {
    ApiError::Conflict {
        group: r.group,
        resource: r.plural,
        name: name.into(),
    }
}

fn storage_error(r: &Resource, name: &str, err: StorageError) -> ApiError {
    match err {
        StorageError::Conflict { .. } => conflict(r, name),
        StorageError::NotFound { .. } => ApiError::NotFound {
            group: r.group,
            resource: r.plural,
            name: name.into(),
        },
        other => ApiError::Storage(other),
    }
}

/// Applies [`plan`] to one stored object (read at `kv`); returns the object as the DELETE
/// left it (its last state when removed) and whether it was removed.
pub async fn delete_object(
    storage: &dyn Storage,
    r: &Resource,
    kv: &KeyValue,
    current: Value,
    requested: Option<i64>,
    dry_run: bool,
) -> Result<(Value, bool), ApiError> {
    let name = current["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match plan(r, &current, requested) {
        Plan::Unchanged => Ok((current, false)),
        Plan::Remove => {
            if !dry_run {
                storage
                    .delete(&kv.key, Some(kv.mod_revision))
                    .await
                    .map_err(|e| storage_error(r, &name, e))?;
            }
            Ok((current, true))
        }
        Plan::Mark(mut marked) => {
            if !dry_run {
                let revision = storage
                    .update(
                        &kv.key,
                        object::to_stored_as(r, &marked),
                        Some(kv.mod_revision),
                    )
                    .await
                    .map_err(|e| storage_error(r, &name, e))?;
                object::set_resource_version(&mut marked, revision);
            }
            Ok((marked, false))
        }
    }
}

/// The finalizer that keeps an owner deleted with `propagationPolicy: Foreground` until the
/// garbage collector has removed its blocking dependents.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer that keeps an owner deleted with `propagationPolicy: Orphan` until the garbage
/// collector has removed the owner references to it from its dependents.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The `DeleteOptions` fields honoured: grace period, preconditions and propagation policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeleteOptions {
    /// The finalizer `propagationPolicy` asks for (`Foreground`, `Orphan`); `None` for
    /// `Background` (the default): the object goes and the garbage collector removes dependents.
    pub propagation_finalizer: Option<&'static str>,
    /// `gracePeriodSeconds`, from the body or the query (the query wins, as in Kubernetes).
    pub grace_period_seconds: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// Parses the optional JSON body and the `gracePeriodSeconds` query parameter.
    pub fn parse(body: &[u8], grace_query: Option<&str>) -> Result<Self, ApiError> {
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding DeleteOptions: {e}")))?
        };
        let query = grace_query
            .map(|g| {
                g.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))
            })
            .transpose()?;
        let pre = &options["preconditions"];
        let propagation_finalizer = match options["propagationPolicy"].as_str() {
            None | Some("Background") => None,
            Some("Foreground") => Some(FOREGROUND_FINALIZER),
            Some("Orphan") => Some(ORPHAN_FINALIZER),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid propagationPolicy {other:?}: want Foreground, Background or Orphan"
                )))
            }
        };
        // The deprecated `orphanDependents: true` is `Orphan`.
        let propagation_finalizer = propagation_finalizer.or(options["orphanDependents"]
            .as_bool()
            .filter(|o| *o)
            .map(|_| ORPHAN_FINALIZER));
        Ok(DeleteOptions {
            propagation_finalizer,
            grace_period_seconds: query.or_else(|| options["gracePeriodSeconds"].as_i64()),
            uid: pre["uid"].as_str().map(Into::into),
            resource_version: pre["resourceVersion"].as_str().map(Into::into),
        })
    }
}

/// DELETE an object.
pub async fn delete(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    options: &DeleteOptions,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    // A concurrent write (a controller's status update) between the read and the delete is
    // retried on the new version, as the apiserver's GuaranteedUpdate does; a failed
    // precondition is checked again on each read and stays a 409.
    let mut attempts = 1;
    loop {
        match delete_once(storage, t, name, options, dry_run).await {
            Err(ApiError::Conflict { .. }) if attempts < MAX_ATTEMPTS => attempts += 1,
            other => return other,
        }
    }
}

/// How often a DELETE is tried against concurrent writes before it answers 409.
const MAX_ATTEMPTS: u32 = 5;

/// One read-decide-write round of [`delete`].
async fn delete_once(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    options: &DeleteOptions,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let r = t.resource;
    let (kv, current) = get_object(storage, t, name).await?;
    if let Some(uid) = &options.uid {
        if current["metadata"]["uid"].as_str() != Some(uid) {
            return Err(conflict(r, name));
        }
    }
    if let Some(rv) = &options.resource_version {
        if *rv != kv.mod_revision.to_string() {
            return Err(conflict(r, name));
        }
    }
    if r.plural == "namespaces" {
        let ns = namespaces::terminate(storage, (&kv, current), dry_run).await?;
        return Ok(http::json(200, &ns));
    }
    let current = with_propagation_finalizer(current, options.propagation_finalizer);
    let (left, removed) = delete_object(
        storage,
        r,
        &kv,
        current,
        options.grace_period_seconds,
        dry_run,
    )
    .await?;
    if removed && !dry_run {
        if let Some(ns) = t.namespace.as_deref() {
            namespaces::finalize(storage, ns).await?;
        }
    }
    if removed && !r.returns_deleted_object() {
        return Ok(http::json(200, &success_status(r, &left)));
    }
    Ok(http::json(200, &left))
}

/// The `Status` a DELETE that removed `object` at once answers with, for kinds that do not
/// return the object (upstream's `finalizeDelete`): `kubectl delete` prints the name from it.
fn success_status(r: &Resource, object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut details = json!({"name": meta["name"], "kind": r.plural, "uid": meta["uid"]});
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

/// `current` with the finalizer of a Foreground or Orphan deletion added, so that the DELETE
/// marks it instead of removing it (unless its deletion is already pending: finalizers cannot
/// be added then).
fn with_propagation_finalizer(mut current: Value, finalizer: Option<&str>) -> Value {
    let Some(finalizer) = finalizer.filter(|_| !is_deleting(&current)) else {
        return current;
    };
    let meta = &mut current["metadata"];
    if !meta["finalizers"].is_array() {
        meta["finalizers"] = json!([]);
    }
    let list = meta["finalizers"]
        .as_array_mut()
        .expect("set to an array above");
    if !list.iter().any(|f| f == finalizer) {
        list.push(json!(finalizer));
    }
    current
}

/// Removes an object that an update (at `expected` revision) released from its pending
/// deletion; for a namespace, finishes its termination if it is empty.
pub async fn remove_released(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    expected: u64,
) -> Result<(), ApiError> {
    let r = t.resource;
    let key = object_key(r, t.namespace.as_deref(), name);
    storage
        .delete(&key, Some(expected))
        .await
        .map_err(|e| storage_error(r, name, e))?;
    if let Some(ns) = t.namespace.as_deref() {
        namespaces::finalize(storage, ns).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    fn pods() -> &'static Resource {
        find("", "v1", "pods").unwrap()
    }

    #[test]
    fn plans() {
        let cms = find("", "v1", "configmaps").unwrap();
        let cm = json!({"metadata": {"name": "c"}});
        assert_eq!(plan(cms, &cm, Some(30)), Plan::Remove);
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(plan(pods(), &unbound, None), Plan::Remove);

        let bound = json!({"metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 45}});
        let Plan::Mark(marked) = plan(pods(), &bound, None) else {
            panic!("a bound pod is marked")
        };
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 45);
        assert!(is_deleting(&marked));
        assert_eq!(plan(pods(), &marked, None), Plan::Unchanged);
        let Plan::Mark(shorter) = plan(pods(), &marked, Some(5)) else {
            panic!("a shorter grace period is taken")
        };
        assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5);
        assert_eq!(plan(pods(), &marked, Some(0)), Plan::Remove);
        let mut done = bound.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(plan(pods(), &done, None), Plan::Remove);

        let held = json!({"metadata": {"name": "c", "finalizers": ["x/y"]}});
        let Plan::Mark(marked) = plan(cms, &held, None) else {
            panic!("finalizers hold the object")
        };
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(!removed_by_update(&marked));
        let mut released = marked.clone();
        released["metadata"]["finalizers"] = json!([]);
        assert!(removed_by_update(&released));
        let mut more = marked.clone();
        more["metadata"]["finalizers"] = json!(["x/y", "x/z"]);
        assert!(check_new_finalizers(cms, &marked, &more).is_err());
        assert!(check_new_finalizers(cms, &marked, &released).is_ok());
    }

    #[test]
    fn options_from_body_and_query() {
        let o = DeleteOptions::parse(br#"{"gracePeriodSeconds": 5}"#, None).unwrap();
        assert_eq!(o.grace_period_seconds, Some(5));
        let o = DeleteOptions::parse(br#"{"gracePeriodSeconds": 5}"#, Some("0")).unwrap();
        assert_eq!(o.grace_period_seconds, Some(0));
        assert!(DeleteOptions::parse(b"", Some("x")).is_err());
        assert!(DeleteOptions::parse(b"{", None).is_err());
        let o = DeleteOptions::parse(br#"{"propagationPolicy": "Foreground"}"#, None).unwrap();
        assert_eq!(o.propagation_finalizer, Some(FOREGROUND_FINALIZER));
        let o = DeleteOptions::parse(br#"{"propagationPolicy": "Orphan"}"#, None).unwrap();
        assert_eq!(o.propagation_finalizer, Some(ORPHAN_FINALIZER));
        let o = DeleteOptions::parse(br#"{"propagationPolicy": "Background"}"#, None).unwrap();
        assert_eq!(o.propagation_finalizer, None);
        assert!(DeleteOptions::parse(br#"{"propagationPolicy": "x"}"#, None).is_err());
    }

    #[test]
    fn propagation_finalizer_marks_instead_of_removing() {
        let cms = find("", "v1", "configmaps").unwrap();
        let cm = with_propagation_finalizer(
            json!({"metadata": {"name": "c"}}),
            Some(FOREGROUND_FINALIZER),
        );
        let Plan::Mark(marked) = plan(cms, &cm, None) else {
            panic!("a foreground deletion marks the object")
        };
        assert_eq!(
            marked["metadata"]["finalizers"],
            json!(["foregroundDeletion"])
        );
        assert!(is_deleting(&marked));
        // Already deleting: no new finalizer.
        let again = with_propagation_finalizer(marked.clone(), Some(ORPHAN_FINALIZER));
        assert_eq!(again, marked);
    }
}
