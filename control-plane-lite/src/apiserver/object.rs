//! Stored objects: decoding from storage (with `resourceVersion` from the revision), encoding,
//! type checks of incoming bodies and the `autoscaling/v1 Scale` view of a deployment.

use serde_json::{json, Value};

use super::error::ApiError;
use super::resources::Resource;
use crate::storage::KeyValue;

/// Decodes a stored value and sets `metadata.resourceVersion` to `revision`.
pub fn from_stored(value: &[u8], revision: u64) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::BadRequest(format!("stored object is not valid JSON: {e}")))?;
    set_resource_version(&mut object, revision);
    Ok(object)
}

/// Decodes a stored key-value as of its `mod_revision`.
pub fn from_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    from_stored(&kv.value, kv.mod_revision)
}

/// Whether `resource` is stored in another version's form (see `events.rs`).
fn is_events_view(resource: &Resource) -> bool {
    resource.group == "events.k8s.io"
}

/// [`from_stored`] in `resource`'s version.
pub fn from_stored_as(resource: &Resource, value: &[u8], revision: u64) -> Result<Value, ApiError> {
    let object = from_stored(value, revision)?;
    Ok(if is_events_view(resource) {
        super::events::from_core(object)
    } else {
        object
    })
}

/// [`from_kv`] in `resource`'s version.
pub fn from_kv_as(resource: &Resource, kv: &KeyValue) -> Result<Value, ApiError> {
    from_stored_as(resource, &kv.value, kv.mod_revision)
}

/// [`to_stored`] of an object of `resource`, in the stored version.
pub fn to_stored_as(resource: &Resource, object: &Value) -> Vec<u8> {
    if is_events_view(resource) {
        to_stored(&super::events::to_core(object.clone()))
    } else {
        to_stored(object)
    }
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(object: &mut Value, revision: u64) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
}

/// The bytes to store: the object without `resourceVersion` (the revision is the truth).
pub fn to_stored(object: &Value) -> Vec<u8> {
    let mut object = object.clone();
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

/// `metadata.resourceVersion` of a body as a revision (`None` when empty); malformed → 400.
pub fn resource_version(object: &Value) -> Result<Option<u64>, ApiError> {
    match object["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// Checks (or fills, when absent) `apiVersion` and `kind` of an incoming body.
pub fn check_type_meta(
    resource: &Resource,
    object: &mut Value,
    kind: &str,
    api_version: &str,
) -> Result<(), ApiError> {
    match object["apiVersion"].as_str() {
        None => object["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match object["kind"].as_str() {
        None => object["kind"] = json!(kind),
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind}) of {}",
                resource.plural
            )))
        }
    }
    Ok(())
}

/// Runs the kind's typed decoding; a mismatch is a 400 naming the kind.
pub fn decode(resource: &Resource, object: Value) -> Result<Value, ApiError> {
    (resource.decode)(object).map_err(|e| {
        ApiError::BadRequest(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = resource.kind,
            v = resource.version
        ))
    })
}

/// The `autoscaling/v1 Scale` of a Deployment, ReplicaSet or StatefulSet.
pub fn scale_of(deployment: &Value) -> Value {
    let meta = &deployment["metadata"];
    let selector: Vec<String> = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": { "replicas": deployment["spec"]["replicas"].as_i64().unwrap_or(1) },
        "status": {
            "replicas": deployment["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector.join(","),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn stored_round_trip_moves_resource_version_out() {
        let obj = json!({"metadata":{"name":"a","resourceVersion":"3"}});
        let bytes = to_stored(&obj);
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let back = from_stored(&bytes, 9).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "9");
        assert_eq!(resource_version(&back).unwrap(), Some(9));
    }

    #[test]
    fn type_meta_mismatch_is_400() {
        let cm = find("", "v1", "configmaps").unwrap();
        let mut obj = json!({"apiVersion":"apps/v1","kind":"ConfigMap"});
        assert!(check_type_meta(cm, &mut obj, "ConfigMap", "v1").is_err());
        let mut obj = json!({});
        check_type_meta(cm, &mut obj, "ConfigMap", "v1").unwrap();
        assert_eq!(obj["kind"], "ConfigMap");
    }
}
