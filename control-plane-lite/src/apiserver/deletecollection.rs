//! DELETE of a collection (`deletecollection`): every object the label and field selectors
//! match, each deleted as by its own DELETE (graceful deletion of bound pods, finalizers; see
//! `deletion.rs`) with the request's options.
//!
//! As upstream, the reply is the list of the matched objects as listed before deletion; an
//! object that vanished in between is skipped, one that changed is re-read and deleted again.
//! Namespaced resources take it only in a namespace path (there is no all-namespaces
//! deletecollection), and namespaces not at all.

use hyper::Response;
use serde_json::{json, Value};

use super::deletion::{delete_object, DeleteOptions};
use super::error::ApiError;
use super::http::{self, Body, Query};
use super::namespaces;
use super::object;
use super::path::{collection_prefix, object_key, Target};
use super::read::{list_page, Filter, Scan};
use super::resources::Resource;
use crate::storage::Storage;

/// How many times one object is re-read when a concurrent write beats its deletion.
const RETRIES: usize = 5;

/// Whether `r` takes `deletecollection` (as its discovery verbs say).
pub fn supported(r: &Resource) -> bool {
    r.verbs().contains(&"deletecollection")
}

/// Deletes one listed object, re-reading it when it changed since; `Ok(false)` when it is
/// gone already.
async fn delete_one(
    storage: &dyn Storage,
    t: &Target,
    listed: &Value,
    options: &DeleteOptions,
    dry_run: bool,
) -> Result<bool, ApiError> {
    let r = t.resource;
    let name = listed["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = listed["metadata"]["namespace"].as_str();
    let key = object_key(r, namespace.or(t.namespace.as_deref()), name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(kv) = storage.get(&key).await? else {
            return Ok(false);
        };
        let current = object::from_kv_as(r, &kv)?;
        // The preconditions apply to every object, as upstream.
        let uid_differs = options
            .uid
            .as_ref()
            .is_some_and(|uid| current["metadata"]["uid"].as_str() != Some(uid));
        let rv_differs = options
            .resource_version
            .as_ref()
            .is_some_and(|rv| *rv != kv.mod_revision.to_string());
        if uid_differs || rv_differs {
            return Err(ApiError::Conflict {
                group: r.group,
                resource: r.plural,
                name: name.into(),
            });
        }
        match delete_object(
            storage,
            r,
            &kv,
            current,
            options.grace_period_seconds,
            dry_run,
        )
        .await
        {
            Ok((_, removed)) => return Ok(removed),
            Err(ApiError::NotFound { .. }) => return Ok(false),
            Err(ApiError::Conflict { .. }) if attempt < RETRIES => continue,
            Err(err) => return Err(err),
        }
    }
}

/// DELETE a collection.
pub async fn delete_collection(
    storage: &dyn Storage,
    t: &Target,
    query: &Query,
    options: &DeleteOptions,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let r = t.resource;
    if !supported(r) || (r.namespaced && t.namespace.is_none()) {
        return Err(ApiError::MethodNotAllowed);
    }
    let filter = Filter::from_query(query)?;
    let prefix = collection_prefix(r, t.namespace.as_deref());
    let page = list_page(storage, r, Scan::all(&prefix, &filter)).await?;
    let mut removed_any = false;
    for item in &page.items {
        removed_any |= delete_one(storage, t, item, options, dry_run).await?;
    }
    if removed_any && !dry_run {
        if let Some(ns) = t.namespace.as_deref() {
            namespaces::finalize(storage, ns).await?;
        }
    }
    tracing::debug!(
        resource = r.plural,
        namespace = ?t.namespace,
        matched = page.items.len(),
        "deletecollection"
    );
    Ok(http::json(
        200,
        &json!({
            "kind": r.list_kind(),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": page.items,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;
    use crate::storage::MemoryStorage;

    fn target(plural: &str, ns: Option<&str>) -> Target {
        Target {
            resource: find("", "v1", plural).unwrap(),
            namespace: ns.map(Into::into),
            name: None,
            subresource: None,
            watch_path: false,
        }
    }

    async fn put(storage: &MemoryStorage, key: &str, object: Value) {
        storage
            .create(key, object::to_stored(&object))
            .await
            .unwrap();
    }

    fn pod(name: &str, app: &str, node: Option<&str>) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "n", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        p
    }

    async fn keys(storage: &MemoryStorage, prefix: &str) -> Vec<String> {
        let page = storage.list(prefix, None, 0, None).await.unwrap();
        page.kvs.into_iter().map(|kv| kv.key).collect()
    }

    #[tokio::test]
    async fn deletes_what_the_selectors_match_each_as_a_single_delete() {
        let storage = MemoryStorage::new();
        put(&storage, "/registry/pods/n/a", pod("a", "web", None)).await;
        put(&storage, "/registry/pods/n/b", pod("b", "web", Some("n1"))).await;
        put(&storage, "/registry/pods/n/c", pod("c", "db", None)).await;
        put(&storage, "/registry/pods/m/d", pod("d", "web", None)).await;
        let query = Query::parse(Some("labelSelector=app%3Dweb"));
        let resp = delete_collection(
            &storage,
            &target("pods", Some("n")),
            &query,
            &DeleteOptions::default(),
            false,
        )
        .await
        .unwrap();
        let list = http::body_json(resp).await;
        assert_eq!(list["kind"], "PodList");
        let names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        // a is gone, b (bound) is marked for graceful deletion, c and d are untouched.
        assert_eq!(
            keys(&storage, "/registry/pods/").await,
            [
                "/registry/pods/m/d",
                "/registry/pods/n/b",
                "/registry/pods/n/c"
            ]
        );
        let b = storage.get("/registry/pods/n/b").await.unwrap().unwrap();
        let b = object::from_kv(&b).unwrap();
        assert!(b["metadata"]["deletionTimestamp"].is_string());

        // With gracePeriodSeconds=0 the marked pod goes too; a field selector narrows.
        let query = Query::parse(Some("fieldSelector=spec.nodeName%3Dn1"));
        let grace0 = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        delete_collection(&storage, &target("pods", Some("n")), &query, &grace0, false)
            .await
            .unwrap();
        assert_eq!(
            keys(&storage, "/registry/pods/").await,
            ["/registry/pods/m/d", "/registry/pods/n/c"]
        );
    }

    #[tokio::test]
    async fn dry_run_keeps_everything_and_scope_is_checked() {
        let storage = MemoryStorage::new();
        put(&storage, "/registry/pods/n/a", pod("a", "web", None)).await;
        let all = Query::parse(None);
        let opts = DeleteOptions::default();
        let list = http::body_json(
            delete_collection(&storage, &target("pods", Some("n")), &all, &opts, true)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(keys(&storage, "/registry/pods/").await.len(), 1);
        let err = delete_collection(&storage, &target("pods", None), &all, &opts, false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 405);
        let err = delete_collection(&storage, &target("namespaces", None), &all, &opts, false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 405);
    }
}
