//! The labels and annotations the agent puts on sandboxes and containers.
//!
//! They are the only link from runtime objects back to pods: the sync loop finds a pod's
//! sandboxes by [`POD_UID`], a restarted agent re-adopts them the same way, and the orphan
//! sweep removes sandboxes carrying [`MANAGED_BY`] whose pod is gone. The `io.kubernetes.*`
//! keys are the kubelet's, so `crictl` shows our pods the way it shows a kubelet's.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

/// Pod name label (kubelet's key).
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Pod namespace label (kubelet's key).
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Pod uid label (kubelet's key): how a pod's runtime objects are found.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Container name label (kubelet's key).
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Marks sandboxes this agent created, so it never touches another kubelet's.
pub const MANAGED_BY: &str = "netlet.io/managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGER: &str = "netlet-agent";
/// Annotation with the container's restart count (kubelet's key).
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

/// The pod's own labels plus ours, for its sandbox.
pub fn sandbox_labels(pod: &Pod) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(pod_identity(pod));
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    labels
}

/// The labels of one container of `pod`.
pub fn container_labels(pod: &Pod, container: &str) -> HashMap<String, String> {
    let mut labels = pod_identity(pod);
    labels.insert(CONTAINER_NAME.into(), container.into());
    labels
}

/// A selector for the sandboxes of the pod with `uid`.
pub fn uid_selector(uid: &str) -> HashMap<String, String> {
    HashMap::from([
        (POD_UID.to_string(), uid.to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
    ])
}

/// A selector for every sandbox this agent manages.
pub fn managed_selector() -> HashMap<String, String> {
    HashMap::from([(MANAGED_BY.to_string(), MANAGER.to_string())])
}

/// Name, namespace and uid labels of `pod`.
fn pod_identity(pod: &Pod) -> HashMap<String, String> {
    let m = &pod.metadata;
    HashMap::from([
        (POD_NAME.to_string(), m.name.clone().unwrap_or_default()),
        (
            POD_NAMESPACE.to_string(),
            m.namespace.clone().unwrap_or_default(),
        ),
        (POD_UID.to_string(), m.uid.clone().unwrap_or_default()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn ours_win_over_pod_labels() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                labels: Some(
                    [
                        ("app".into(), "web".into()),
                        (POD_UID.into(), "fake".into()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let l = sandbox_labels(&pod);
        assert_eq!(l["app"], "web");
        assert_eq!(l[POD_UID], "u1");
        assert_eq!(l[MANAGED_BY], MANAGER);
        assert_eq!(container_labels(&pod, "c")[CONTAINER_NAME], "c");
    }
}
