//! Namespace deletion with the controllers running: the workload inside (Deployment,
//! ReplicaSet, pods, Service with its EndpointSlice and Endpoints, ConfigMap) goes, the
//! controllers cannot recreate anything meanwhile, and then the namespace goes.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;

use super::harness::*;

async fn count<K>(c: &Client, ns: &str) -> usize
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_delete_removes_contents_then_namespace() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(c.clone(), "doomed")
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(c.clone(), "doomed")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}})).unwrap();
    Api::<ConfigMap>::namespaced(c.clone(), "doomed")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    h.wait("the pods and the EndpointSlice in the namespace", || {
        let c = c.clone();
        async move {
            (count::<Pod>(&c, "doomed").await == 2
                && count::<EndpointSlice>(&c, "doomed").await >= 1)
                .then_some(())
        }
    })
    .await;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    h.wait("the namespace to be removed", || {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .get_opt("doomed")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert_eq!(count::<Deployment>(&c, "doomed").await, 0);
    assert_eq!(count::<ReplicaSet>(&c, "doomed").await, 0);
    assert_eq!(count::<Pod>(&c, "doomed").await, 0);
    assert_eq!(count::<Service>(&c, "doomed").await, 0);
    assert_eq!(count::<EndpointSlice>(&c, "doomed").await, 0);
    assert_eq!(count::<Endpoints>(&c, "doomed").await, 0);
    assert_eq!(count::<ConfigMap>(&c, "doomed").await, 0);
}
