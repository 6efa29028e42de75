//! The `pods/eviction` subresource (`policy/v1 Eviction`), what `kubectl drain` posts.
//!
//! An eviction is a DELETE of the pod that a disruption policy may refuse. No
//! PodDisruptionBudgets exist in this apiserver yet (the `policy` group serves no kinds), so
//! nothing ever refuses one: the pod is deleted as by a normal DELETE, honouring the
//! Eviction's `deleteOptions` (grace period, preconditions, `dryRun`), which for a pod bound
//! to a node means graceful deletion (see `deletion.rs`). Success is a `Status` with code 201.

use hyper::Response;
use serde_json::{json, Value};

use super::binding::success_status;
use super::deletion::{self, DeleteOptions};
use super::error::ApiError;
use super::http::{self, Body};
use super::path::Target;
use crate::storage::Storage;

/// Checks an Eviction body against the pod `name` of the URL; returns its delete options and
/// whether they ask for a dry run.
fn parse(name: &str, body: &Value) -> Result<(DeleteOptions, bool), ApiError> {
    match (body["apiVersion"].as_str(), body["kind"].as_str()) {
        (None | Some("policy/v1" | "policy/v1beta1"), None | Some("Eviction")) => {}
        (v, k) => {
            return Err(ApiError::BadRequest(format!(
                "expected a policy/v1 Eviction, got apiVersion {v:?} kind {k:?}"
            )))
        }
    }
    match body["metadata"]["name"].as_str() {
        None | Some("") => {}
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "name in URL does not match name in Eviction object: {name} != {n}"
            )))
        }
    }
    let options = &body["deleteOptions"];
    let (options, dry_run) = match options {
        Value::Null => (json!({}), false),
        Value::Object(_) => {
            let dry_run = match &options["dryRun"] {
                Value::Null => false,
                Value::Array(v) if v.is_empty() => false,
                Value::Array(v) if v.len() == 1 && v[0] == "All" => true,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported deleteOptions.dryRun {other}; only [\"All\"] is supported"
                    )))
                }
            };
            (options.clone(), dry_run)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "Eviction deleteOptions must be an object".into(),
            ))
        }
    };
    let bytes = serde_json::to_vec(&options).unwrap_or_default();
    Ok((DeleteOptions::parse(&bytes, None)?, dry_run))
}

/// POST an Eviction of the pod `name` (`t` is the pods target of the URL).
pub async fn create(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    body: Value,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let (options, body_dry_run) = parse(name, &body)?;
    deletion::delete(storage, t, name, &options, dry_run || body_dry_run).await?;
    tracing::debug!(pod = name, namespace = ?t.namespace, "evicted");
    Ok(http::json(201, &success_status(201)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::object;
    use crate::apiserver::path::Subresource;
    use crate::apiserver::read::get_object;
    use crate::apiserver::resources::find;
    use crate::storage::MemoryStorage;

    fn target() -> Target {
        Target {
            resource: find("", "v1", "pods").unwrap(),
            namespace: Some("n".into()),
            name: Some("p".into()),
            subresource: Some(Subresource::Eviction),
            watch_path: false,
        }
    }

    fn eviction(options: Value) -> Value {
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "p", "namespace": "n"}, "deleteOptions": options})
    }

    async fn store(storage: &MemoryStorage, node: Option<&str>) {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u-1"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        storage
            .create("/registry/pods/n/p", object::to_stored(&pod))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn evicts_as_a_graceful_delete_with_the_given_options() {
        let storage = MemoryStorage::new();
        store(&storage, Some("n1")).await;
        let resp = create(
            &storage,
            &target(),
            "p",
            eviction(json!({"gracePeriodSeconds": 7})),
            false,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 201);
        let (_, pod) = get_object(&storage, &target(), "p").await.unwrap();
        assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 7);
        create(
            &storage,
            &target(),
            "p",
            eviction(json!({"gracePeriodSeconds": 0})),
            false,
        )
        .await
        .unwrap();
        let err = get_object(&storage, &target(), "p").await.unwrap_err();
        assert_eq!(err.code(), 404);
        let err = create(&storage, &target(), "p", eviction(Value::Null), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 404);
    }

    #[tokio::test]
    async fn honours_preconditions_and_dry_run() {
        let storage = MemoryStorage::new();
        store(&storage, None).await;
        let wrong_uid = eviction(json!({"preconditions": {"uid": "u-2"}}));
        let err = create(&storage, &target(), "p", wrong_uid, false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 409);
        let dry = eviction(json!({"dryRun": ["All"]}));
        create(&storage, &target(), "p", dry, false).await.unwrap();
        assert!(get_object(&storage, &target(), "p").await.is_ok());
        let mut other = eviction(Value::Null);
        other["metadata"]["name"] = json!("q");
        let err = create(&storage, &target(), "p", other, false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 400);
        // An unbound pod goes at once.
        create(&storage, &target(), "p", eviction(Value::Null), false)
            .await
            .unwrap();
        assert_eq!(
            storage.get("/registry/pods/n/p").await.unwrap().map(|_| ()),
            None
        );
    }
}
