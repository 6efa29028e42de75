//! DELETE of a collection (`deletecollection`) through kube-rs against the real
//! `netlet-control-plane serve`.

use integration::TestApiserver;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().filter_map(|i| i.meta().name.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_by_selectors_with_graceful_pods() {
    let server = TestApiserver::start();
    let client = server.client().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "d1"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "d1");
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db")] {
        let cm =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": tier}}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let deleted = cms
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("tier=web"),
        )
        .await
        .unwrap_or_else(|e| panic!("deletecollection: {e}; log:\n{}", server.log()));
    let deleted = deleted
        .left()
        .expect("a ConfigMapList of the deleted objects");
    assert_eq!(names(&deleted.items), ["a", "b"]);
    let left = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&left.items), ["c", "kube-root-ca.crt"]);

    // A bound pod is deleted gracefully (marked), an unbound one at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "d1");
    for (name, node) in [("bound", Some("n1")), ("unbound", None)] {
        let mut p = json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap())
            .await
            .unwrap();
    }
    let deleted = pods
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap()
        .left()
        .expect("a PodList");
    assert_eq!(names(&deleted.items), ["bound", "unbound"]);
    let left = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&left.items), ["bound"]);
    assert!(left.items[0].metadata.deletion_timestamp.is_some());
    pods.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default().fields("spec.nodeName=n1"),
    )
    .await
    .unwrap();
    assert!(pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());

    // Namespaces take no deletecollection.
    let err = Api::<Namespace>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 405),
        "{err}"
    );
}
