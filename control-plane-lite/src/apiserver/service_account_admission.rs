//! The ServiceAccount admission of pod creates, as in Kubernetes: the pod's ServiceAccount
//! must exist, and unless the pod or its ServiceAccount opts out
//! (`automountServiceAccountToken: false`), the pod gets a `kube-api-access-<suffix>`
//! projected volume — a bound token, the cluster CA and the namespace — mounted read-only at
//! [`MOUNT_PATH`] in every container, which is where in-cluster clients look.

use serde_json::{json, Value};

use super::defaults;
use super::error::ApiError;
use super::namespaces::ROOT_CA_CONFIG_MAP;
use super::read::get_core;
use crate::storage::Storage;

/// Where in-cluster clients read `token`, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the volume's name.
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The token lifetime the kubelet asks for (an hour plus seven seconds, so that the token
/// refreshes are recognisable).
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// Annotation of mirror pods, which must not use the API as a ServiceAccount.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Checks the ServiceAccount of the new pod `pod` in `ns` and adds its token volume.
pub async fn admit(storage: &dyn Storage, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    if pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_string() {
        return Ok(());
    }
    let spec = &pod["spec"];
    let sa_name = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let sa = match get_core(storage, "serviceaccounts", Some(ns), &sa_name).await {
        Ok(sa) => sa,
        Err(ApiError::NotFound { .. }) => {
            return Err(ApiError::Forbidden {
                group: "",
                resource: "pods",
                name: pod["metadata"]["name"].as_str().unwrap_or_default().into(),
                reason: format!(
                    "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
                ),
            })
        }
        Err(e) => return Err(e),
    };
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or(sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        add_token_volume(pod);
    }
    Ok(())
}

/// Whether `container` already mounts something at [`MOUNT_PATH`] (the pod brings its own).
fn mounts_token_path(container: &Value) -> bool {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(MOUNT_PATH))
}

/// Adds the projected token volume to `pod` and mounts it in every container (init and
/// ephemeral ones too) that does not mount something else there already.
fn add_token_volume(pod: &mut Value) {
    let containers = ["initContainers", "containers", "ephemeralContainers"];
    let wanted = containers.iter().any(|k| {
        pod["spec"][k]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| !mounts_token_path(c))
    });
    if !wanted {
        return;
    }
    let name = defaults::generated_name(VOLUME_PREFIX);
    let volume = json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    let spec = &mut pod["spec"];
    match spec["volumes"].as_array_mut() {
        Some(v) => v.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
    for k in containers {
        for c in spec[k].as_array_mut().into_iter().flatten() {
            if mounts_token_path(c) {
                continue;
            }
            let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
            match c["volumeMounts"].as_array_mut() {
                Some(m) => m.push(mount),
                None => c["volumeMounts"] = json!([mount]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::object;
    use crate::storage::MemoryStorage;

    /// Storage holding the `default` ServiceAccount of `ns` (the namespace itself is not
    /// needed by the admission).
    async fn storage_with_namespace() -> MemoryStorage {
        let storage = MemoryStorage::new();
        let sa = json!({"metadata": {"name": "default", "namespace": "ns", "uid": "u"}});
        storage
            .create(
                "/registry/serviceaccounts/ns/default",
                object::to_stored(&sa),
            )
            .await
            .unwrap();
        storage
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    #[tokio::test]
    async fn every_container_gets_the_token_volume_once() {
        let storage = storage_with_namespace().await;
        let mut p = pod(json!({
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "image": "x"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        admit(&storage, "ns", &mut p).await.unwrap();
        let volumes = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap();
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let sources = &volumes[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
        for (kind, i) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
            let mounts = p["spec"][kind][i]["volumeMounts"].as_array().unwrap();
            let m = mounts.last().unwrap();
            assert_eq!(m["name"], name);
            assert_eq!(m["mountPath"], MOUNT_PATH);
            assert_eq!(m["readOnly"], true);
        }
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["name"],
            "data"
        );
    }

    #[tokio::test]
    async fn opting_out_or_bringing_a_mount_adds_nothing() {
        let storage = storage_with_namespace().await;
        let mut p =
            pod(json!({"automountServiceAccountToken": false, "containers": [{"name": "a"}]}));
        admit(&storage, "ns", &mut p).await.unwrap();
        assert!(p["spec"]["volumes"].is_null());
        let own = json!([{"name": "mine", "mountPath": format!("{MOUNT_PATH}/")}]);
        let mut p = pod(json!({"containers": [{"name": "a", "volumeMounts": own}]}));
        admit(&storage, "ns", &mut p).await.unwrap();
        assert!(p["spec"]["volumes"].is_null());
        let mut mirror =
            pod(json!({"serviceAccountName": "missing", "containers": [{"name": "a"}]}));
        mirror["metadata"]["annotations"] = json!({MIRROR_ANNOTATION: "x"});
        admit(&storage, "ns", &mut mirror).await.unwrap();
        assert!(mirror["spec"]["volumes"].is_null());
    }

    #[tokio::test]
    async fn a_missing_service_account_is_forbidden() {
        let storage = storage_with_namespace().await;
        let mut p = pod(json!({"serviceAccountName": "robot", "containers": [{"name": "a"}]}));
        let err = admit(&storage, "ns", &mut p).await.unwrap_err();
        assert_eq!(err.code(), 403);
        assert_eq!(
            err.to_string(),
            "pods \"p\" is forbidden: error looking up service account ns/robot: serviceaccount \"robot\" not found"
        );
    }
}
