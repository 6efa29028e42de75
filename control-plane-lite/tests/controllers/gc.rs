//! The garbage collector: Background, Foreground and Orphan deletion of a Deployment and its
//! ReplicaSets and pods, through kube-rs and through the stock `kubectl delete`.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;

use super::harness::*;

/// Creates Deployment `name` (2 replicas, label app=`name`) and waits for its 2 pods.
async fn deployment_with_pods(h: &Harness, name: &str) -> Deployment {
    let c = h.client.clone();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    let created = Api::<Deployment>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let label = format!("app={name}");
    h.wait("2 pods of the deployment", || {
        let (c, label) = (c.clone(), label.clone());
        async move { (active_pods(&c, &label).await.len() == 2).then_some(()) }
    })
    .await;
    created
}

async fn count<K>(c: &Client, label: &str) -> usize
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(c.clone(), "default")
        .list(&ListParams::default().labels(label))
        .await
        .unwrap()
        .items
        .len()
}

/// Waits until neither ReplicaSets nor pods with `label` are left.
async fn wait_dependents_gone(h: &Harness, label: &str) {
    let c = h.client.clone();
    h.wait("the ReplicaSets and pods to be collected", || {
        let c = c.clone();
        async move {
            (count::<ReplicaSet>(&c, label).await == 0 && count::<Pod>(&c, label).await == 0)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_background_deletes_replicasets_and_pods() {
    let h = Harness::start(ControllersConfig::default()).await;
    spawn_kubelet(h.client.clone(), true, h.cancel.clone());
    deployment_with_pods(&h, "bg").await;
    Api::<Deployment>::namespaced(h.client.clone(), "default")
        .delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    wait_dependents_gone(&h, "app=bg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_foreground_keeps_owner_until_dependents_are_gone() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    // No kubelet yet: bound pods then wait for it, so the Deployment must stay visible.
    let d = deployment_with_pods_unbound(&h, "fg").await;
    deployments
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let held = deployments.get("fg").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(held
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == "foregroundDeletion"));
    assert_eq!(held.metadata.uid, d.metadata.uid);
    // The ReplicaSet is marked in the foreground too while its pods wait for the kubelet.
    h.wait("the ReplicaSet to be deleted in the foreground", || {
        let c = c.clone();
        async move {
            let rss = Api::<ReplicaSet>::namespaced(c, "default")
                .list(&ListParams::default().labels("app=fg"))
                .await
                .unwrap();
            rss.items
                .iter()
                .any(|rs| {
                    rs.metadata.deletion_timestamp.is_some()
                        && rs
                            .metadata
                            .finalizers
                            .iter()
                            .flatten()
                            .any(|f| f == "foregroundDeletion")
                })
                .then_some(())
        }
    })
    .await;
    assert!(
        deployments.get_opt("fg").await.unwrap().is_some(),
        "the Deployment stays while its pods are being deleted"
    );
    // The kubelet finishes the pods' graceful deletion; then everything goes.
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    wait_dependents_gone(&h, "app=fg").await;
    h.wait("the Deployment to go after its dependents", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("fg")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
}

/// Like [`deployment_with_pods`] but the pods are bound to `n1` by hand, without a kubelet to
/// finish their graceful deletion.
async fn deployment_with_pods_unbound(h: &Harness, name: &str) -> Deployment {
    let c = h.client.clone();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"nodeName": "n1",
                                       "containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    let created = Api::<Deployment>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let label = format!("app={name}");
    h.wait("2 pods of the deployment", || {
        let (c, label) = (c.clone(), label.clone());
        async move { (active_pods(&c, &label).await.len() == 2).then_some(()) }
    })
    .await;
    created
}

/// Orphan propagation leaves the ReplicaSet and its pods; a new Deployment selecting them adopts
/// the ReplicaSet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_orphan_leaves_replicaset_without_owner() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    deployment_with_pods(&h, "or").await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deployments
        .delete("or", &DeleteParams::orphan())
        .await
        .unwrap();
    h.wait("the orphaning Deployment to go", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("or")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    let rss = Api::<ReplicaSet>::namespaced(c.clone(), "default")
        .list(&ListParams::default().labels("app=or"))
        .await
        .unwrap()
        .items;
    assert_eq!(rss.len(), 1, "the ReplicaSet stays");
    assert!(
        rss[0]
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "the ReplicaSet has no owner left: {:?}",
        rss[0].metadata.owner_references
    );
    assert_eq!(active_pods(&c, "app=or").await.len(), 2, "its pods stay");

    // The same Deployment created again adopts the orphan ReplicaSet (same template, so no
    // new one) and its pods stay as they are.
    let again = deployment_with_pods(&h, "or").await;
    let uid = again.metadata.uid.clone().unwrap();
    let rs_api = Api::<ReplicaSet>::namespaced(c.clone(), "default");
    let adopted = h
        .wait("the orphan ReplicaSet to be adopted", || {
            let (rs_api, uid) = (rs_api.clone(), uid.clone());
            async move {
                let rss = rs_api
                    .list(&ListParams::default().labels("app=or"))
                    .await
                    .unwrap()
                    .items;
                let owned = rss.iter().all(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.uid == uid && r.controller == Some(true))
                });
                (owned && !rss.is_empty()).then_some(rss)
            }
        })
        .await;
    assert_eq!(adopted.len(), 1, "adopted, not replaced: {adopted:?}");
    assert_eq!(adopted[0].metadata.name, rss[0].metadata.name);
    assert_eq!(active_pods(&c, "app=or").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_kubectl_delete_deployment_removes_everything() {
    let h = Harness::start(ControllersConfig::default()).await;
    spawn_kubelet(h.client.clone(), true, h.cancel.clone());
    deployment_with_pods(&h, "kd").await;
    let kubeconfig = h.server.kubeconfig();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .env(
                "HOME",
                kubeconfig
                    .parent()
                    .expect("the kubeconfig is in a temp dir"),
            )
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["delete", "deployment", "kd", "-n", "default"])
            .output()
    })
    .await
    .unwrap()
    .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_dependents_gone(&h, "app=kd").await;
}
