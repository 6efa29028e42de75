//! Writing a decision: `POST /api/v1/namespaces/NS/pods/NAME/binding` with a core/v1 Binding,
//! which sets `spec.nodeName` only if the pod is still unbound (the apiserver checks).

use super::error::SchedulerError;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

/// The Binding object that assigns `name` to `node`.
pub fn binding(name: &str, uid: Option<&str>, node: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            uid: uid.map(str::to_string),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    }
}

/// Binds pod `namespace/name` to `node`.
pub async fn bind(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    node: &str,
) -> Result<(), SchedulerError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding(name, uid, node),
    )
    .await
    .map_err(|source| SchedulerError::Bind {
        pod: format!("{namespace}/{name}"),
        node: node.to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binding_body_targets_the_node() {
        let b = serde_json::to_value(binding("web-1", Some("u"), "n2")).unwrap();
        assert_eq!(b["kind"], "Binding");
        assert_eq!(b["metadata"], json!({"name": "web-1", "uid": "u"}));
        assert_eq!(
            b["target"],
            json!({"kind": "Node", "apiVersion": "v1", "name": "n2"})
        );
    }
}
