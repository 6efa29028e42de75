//! The `pods/binding` subresource (and the core `bindings` collection): how a scheduler assigns
//! a pod to a node.
//!
//! As upstream's `BindingREST`: the Binding's `target` must be a Node (kind empty or `Node`)
//! with a name; the pod's `spec.nodeName` is set in one compare-and-swap write that is retried
//! on revision conflicts, together with the Binding's annotations and a `PodScheduled=True`
//! condition. A pod that already has a node, or is being deleted, is refused with 409; the
//! Binding's `metadata.uid` and `resourceVersion`, when set, are preconditions on the pod.
//! Success is a `Status` with code 201.

use hyper::Response;
use serde_json::{json, Value};

use super::defaults;
use super::deletion::is_deleting;
use super::error::{ApiError, FieldCause};
use super::http::{self, Body};
use super::object;
use super::path::{object_key, Target};
use super::read::get_object;
use crate::storage::{Storage, StorageError};

/// How many times a binding re-reads the pod when a concurrent write beats it.
const BIND_RETRIES: usize = 10;

/// The resource named in binding errors, as upstream.
const RESOURCE: &str = "pods/binding";

fn invalid(name: &str, field: &str, reason: &'static str, message: String) -> ApiError {
    ApiError::Invalid {
        group: "",
        kind: "Binding",
        name: name.into(),
        causes: vec![FieldCause {
            field: field.into(),
            reason,
            message,
        }],
    }
}

fn refused(name: &str, reason: String) -> ApiError {
    ApiError::Refused {
        group: "",
        resource: RESOURCE,
        name: name.into(),
        reason,
    }
}

/// The checked parts of a Binding body.
#[derive(Debug, Clone, PartialEq)]
struct Binding {
    pod: String,
    node: String,
    uid: Option<String>,
    resource_version: Option<u64>,
    annotations: serde_json::Map<String, Value>,
}

/// Checks a Binding body against the URL: `url_name` is the pod of `pods/<name>/binding`,
/// `None` for the `bindings` collection (the Binding's own name is then the pod's).
fn parse(url_name: Option<&str>, mut body: Value) -> Result<Binding, ApiError> {
    match (body["apiVersion"].as_str(), body["kind"].as_str()) {
        (None | Some("v1"), None | Some("Binding")) => {}
        (v, k) => {
            return Err(ApiError::BadRequest(format!(
                "expected a v1 Binding, got apiVersion {v:?} kind {k:?}"
            )))
        }
    }
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Binding");
    let binding: k8s_openapi::api::core::v1::Binding = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::BadRequest(format!("error decoding Binding: {e}")))?;
    let body_name = binding.metadata.name.clone().unwrap_or_default();
    let pod = match url_name {
        Some(url) if body_name.is_empty() || body_name == url => url.to_string(),
        Some(url) => {
            return Err(ApiError::BadRequest(format!(
                "name in URL does not match name in Binding object: {url} != {body_name}"
            )))
        }
        None if body_name.is_empty() => {
            return Err(invalid(
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required".into(),
            ))
        }
        None => body_name,
    };
    let target = &binding.target;
    if !matches!(target.kind.as_deref(), None | Some("") | Some("Node")) {
        return Err(invalid(
            &pod,
            "target.kind",
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {:?}: supported values: \"Node\", \"\"",
                target.kind.as_deref().unwrap_or_default()
            ),
        ));
    }
    let node = target.name.clone().unwrap_or_default();
    if node.is_empty() {
        return Err(invalid(
            &pod,
            "target.name",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    Ok(Binding {
        pod,
        node,
        uid: binding.metadata.uid.filter(|u| !u.is_empty()),
        resource_version: object::resource_version(&body)?,
        annotations: binding
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect(),
    })
}

/// The pod as bound by `binding`, or why it cannot be.
fn bind(current: &Value, binding: &Binding) -> Result<Value, ApiError> {
    let name = &binding.pod;
    if is_deleting(current) {
        return Err(refused(
            name,
            format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    if let Some(node) = current["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        return Err(refused(
            name,
            format!("pod {name} is already assigned to node {node:?}"),
        ));
    }
    if current["spec"]["schedulingGates"]
        .as_array()
        .is_some_and(|g| !g.is_empty())
    {
        return Err(refused(
            name,
            format!("pod {name} has non-empty .spec.schedulingGates"),
        ));
    }
    let mut pod = current.clone();
    pod["spec"]["nodeName"] = json!(binding.node);
    if !binding.annotations.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        for (k, v) in &binding.annotations {
            pod["metadata"]["annotations"][k] = v.clone();
        }
    }
    set_scheduled(&mut pod);
    defaults::on_update(current, &mut pod, true);
    Ok(pod)
}

/// Adds or replaces the `PodScheduled` condition with `True` (upstream's `UpdatePodCondition`:
/// the transition time is kept when the status does not change).
fn set_scheduled(pod: &mut Value) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"]
        .as_array_mut()
        .expect("just made an array");
    let existing = conditions.iter().position(|c| c["type"] == "PodScheduled");
    let transition = match existing.map(|i| &conditions[i]) {
        Some(old) if old["status"] == "True" && old["lastTransitionTime"].is_string() => {
            old["lastTransitionTime"].clone()
        }
        _ => json!(defaults::now()),
    };
    let condition = json!({
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    });
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// POST a Binding: `t` is the pods target of `pods/<name>/binding` (name set) or of the
/// `bindings` collection (name unset, taken from the body).
pub async fn create(
    storage: &dyn Storage,
    t: &Target,
    body: Value,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let binding = parse(t.name.as_deref(), body)?;
    let name = binding.pod.as_str();
    let key = object_key(t.resource, t.namespace.as_deref(), name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (kv, current) = get_object(storage, t, name).await?;
        let precondition = |what: &str, expected: &str, actual: &str| {
            refused(
                name,
                format!(
                    "Precondition failed: {what} in precondition: {expected}, {what} in object meta: {actual}"
                ),
            )
        };
        if let Some(uid) = &binding.uid {
            let actual = current["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != actual {
                return Err(precondition("UID", uid, actual));
            }
        }
        if let Some(rv) = binding.resource_version {
            if rv != kv.mod_revision {
                return Err(precondition(
                    "ResourceVersion",
                    &rv.to_string(),
                    &kv.mod_revision.to_string(),
                ));
            }
        }
        let pod = bind(&current, &binding)?;
        if dry_run {
            break;
        }
        match storage
            .update(
                &key,
                object::to_stored_as(t.resource, &pod),
                Some(kv.mod_revision),
            )
            .await
        {
            Ok(_) => break,
            // Someone else wrote the pod in between: decide again on the newest version.
            Err(StorageError::Conflict { .. }) if attempt < BIND_RETRIES => continue,
            Err(StorageError::Conflict { .. }) => {
                return Err(ApiError::Conflict {
                    group: "",
                    resource: "pods",
                    name: name.into(),
                })
            }
            Err(StorageError::NotFound { .. }) => {
                return Err(ApiError::NotFound {
                    group: "",
                    resource: "pods",
                    name: name.into(),
                })
            }
            Err(other) => return Err(ApiError::Storage(other)),
        }
    }
    tracing::debug!(pod = name, node = binding.node, "bound");
    Ok(http::json(201, &success_status(201)))
}

/// The `Status` of a successful subresource POST whose result is no object.
pub fn success_status(code: u16) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;
    use crate::storage::MemoryStorage;

    fn pods(name: Option<&str>) -> Target {
        Target {
            resource: find("", "v1", "pods").unwrap(),
            namespace: Some("n".into()),
            name: name.map(Into::into),
            subresource: Some(super::super::path::Subresource::Binding),
            watch_path: false,
        }
    }

    fn binding(pod: &str, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
            "target": {"kind": "Node", "name": node}})
    }

    async fn store_pod(storage: &MemoryStorage, pod: Value) {
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        storage
            .create(&format!("/registry/pods/n/{name}"), object::to_stored(&pod))
            .await
            .unwrap();
    }

    async fn stored(storage: &MemoryStorage, name: &str) -> Value {
        get_object(storage, &pods(None), name).await.unwrap().1
    }

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "n", "uid": "u-1", "generation": 1},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable"}]}})
    }

    #[tokio::test]
    async fn binds_once_and_sets_the_scheduled_condition() {
        let storage = MemoryStorage::new();
        store_pod(&storage, pod("p")).await;
        let mut b = binding("p", "n1");
        b["metadata"]["annotations"] = json!({"a": "b"});
        let resp = create(&storage, &pods(Some("p")), b, false).await.unwrap();
        assert_eq!(resp.status(), 201);
        let p = stored(&storage, "p").await;
        assert_eq!(p["spec"]["nodeName"], "n1");
        assert_eq!(p["metadata"]["annotations"]["a"], "b");
        let conditions = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1, "{conditions:?}");
        assert_eq!(conditions[0]["status"], "True");
        assert!(conditions[0].get("reason").is_none());
        assert!(conditions[0]["lastTransitionTime"].is_string());

        let err = create(&storage, &pods(Some("p")), binding("p", "n2"), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 409);
        assert_eq!(
            err.to_string(),
            "Operation cannot be fulfilled on pods/binding \"p\": pod p is already assigned to node \"n1\""
        );
        assert_eq!(stored(&storage, "p").await["spec"]["nodeName"], "n1");
    }

    #[tokio::test]
    async fn the_bindings_collection_takes_the_pod_from_the_body() {
        let storage = MemoryStorage::new();
        store_pod(&storage, pod("q")).await;
        create(&storage, &pods(None), binding("q", "n2"), false)
            .await
            .unwrap();
        assert_eq!(stored(&storage, "q").await["spec"]["nodeName"], "n2");
        let err = create(&storage, &pods(None), binding("missing", "n2"), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 404);
    }

    #[tokio::test]
    async fn refuses_bad_bindings_and_stores_nothing() {
        let storage = MemoryStorage::new();
        store_pod(&storage, pod("p")).await;
        let before = storage.current_revision().await.unwrap();
        let t = pods(Some("p"));
        let err = create(&storage, &t, binding("other", "n1"), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 400, "{err}");
        let mut b = binding("p", "n1");
        b["target"]["kind"] = json!("Pod");
        assert_eq!(
            create(&storage, &t, b, false).await.unwrap_err().code(),
            422
        );
        let mut b = binding("p", "");
        b["target"] = json!({});
        assert_eq!(
            create(&storage, &t, b, false).await.unwrap_err().code(),
            422
        );
        let mut b = binding("p", "n1");
        b["metadata"]["uid"] = json!("u-2");
        assert_eq!(
            create(&storage, &t, b, false).await.unwrap_err().code(),
            409
        );
        assert_eq!(
            create(&storage, &t, binding("p", "n1"), true)
                .await
                .unwrap()
                .status(),
            201
        );
        assert_eq!(storage.current_revision().await.unwrap(), before);

        let mut deleting = pod("d");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        store_pod(&storage, deleting).await;
        let err = create(&storage, &pods(Some("d")), binding("d", "n1"), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is being deleted"), "{err}");
    }

    #[test]
    fn scheduled_condition_keeps_its_transition_time_when_already_true() {
        let mut p = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True",
            "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        set_scheduled(&mut p);
        assert_eq!(
            p["status"]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        let mut p = json!({"spec": {}});
        set_scheduled(&mut p);
        assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
    }
}
