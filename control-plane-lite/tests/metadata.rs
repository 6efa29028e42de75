//! Metadata-only reads (`as=PartialObjectMetadata[List]`) through kube-rs: `get_metadata`,
//! `list_metadata` and a `watcher` over `Api<PartialObjectMeta<_>>` against our apiserver.

use std::time::Duration;

use futures::StreamExt;
use integration::TestApiserver;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PartialObjectMeta, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;

#[tokio::test]
async fn metadata_get_list_and_watch() {
    let s = TestApiserver::start();
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "m1", "labels": {"app": "x"}}, "data": {"k": "v"}}))
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();

    let one = cms.get_metadata("m1").await.unwrap();
    assert_eq!(one.metadata.uid, created.metadata.uid);
    assert_eq!(one.types.as_ref().unwrap().kind, "PartialObjectMetadata");

    let list = cms
        .list_metadata(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("m1"));
    assert!(list.metadata.resource_version.is_some());

    // The watcher sees the existing object, then a new one.
    let metas: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(metas, watcher::Config::default().labels("app=x"))
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("the first watch event within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("m1"));
    let mut cm2 = cm.clone();
    cm2.metadata.name = Some("m2".into());
    cms.create(&PostParams::default(), &cm2).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("the second watch event within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(second.metadata.name.as_deref(), Some("m2"));
    assert_eq!(second.types.unwrap().kind, "PartialObjectMetadata");
}
