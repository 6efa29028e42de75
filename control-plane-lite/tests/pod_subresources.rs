//! The pod subresources a scheduler and `kubectl drain` use, driven through kube-rs against the
//! real `netlet-control-plane serve` (`integration::TestApiserver`).

use std::collections::BTreeMap;

use futures::future::join_all;
use integration::{create_namespace as namespace, status_code, TestApiserver};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, EvictParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

async fn pending_pod(pods: &Api<Pod>, name: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

fn binding(pod: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_assigns_a_pod_once() {
    let server = TestApiserver::start();
    let client = server.client().await;
    namespace(&client, "b1").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "b1");
    pending_pod(&pods, "p").await;

    let status: Value = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding("p", "n1"))
        .await
        .unwrap_or_else(|e| panic!("bind p: {e}; log:\n{}", server.log()));
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Success");
    assert_eq!(status["code"], 201);

    let p = pods.get("p").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
    let conditions = p.status.unwrap().conditions.unwrap();
    let scheduled = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("PodScheduled condition");
    assert_eq!(scheduled.status, "True");

    // A second binding is a 409 Conflict naming the node the pod is on.
    let err = pods
        .create_subresource::<_, Value>("binding", "p", &PostParams::default(), &binding("p", "n2"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("expected a Status error, got {err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains("already assigned to node \"n1\""),
        "{}",
        status.message
    );

    // A missing pod is a 404.
    let err = pods
        .create_subresource::<_, Value>(
            "binding",
            "nope",
            &PostParams::default(),
            &binding("nope", "n1"),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(404), "{err}");

    // The `bindings` collection binds the pod the Binding is named after.
    pending_pod(&pods, "q").await;
    let bindings: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "b1",
        &kube::api::ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Binding".into(),
            plural: "bindings".into(),
        },
    );
    let body: DynamicObject = serde_json::from_value(binding("q", "n2")).unwrap();
    let status = bindings
        .create(&PostParams::default(), &body)
        .await
        .expect("POST bindings");
    assert_eq!(status.data["status"], "Success");
    let q = pods.get("q").await.unwrap();
    assert_eq!(q.spec.unwrap().node_name.as_deref(), Some("n2"));
}

/// Concurrent schedulers: exactly one of many bindings of one pod wins, and label patches
/// racing with a binding do not make it fail (it re-reads the pod on a revision conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bindings_have_one_winner() {
    let server = TestApiserver::start();
    let client = server.client().await;
    namespace(&client, "b2").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "b2");
    pending_pod(&pods, "p").await;

    let attempts = (0..8).map(|i| {
        let pods = pods.clone();
        async move {
            pods.create_subresource::<_, Value>(
                "binding",
                "p",
                &PostParams::default(),
                &binding("p", &format!("n{i}")),
            )
            .await
        }
    });
    let results = join_all(attempts).await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(status_code(e), Some(409), "{e}");
        }
    }
    let node = pods.get("p").await.unwrap().spec.unwrap().node_name;
    assert_eq!(node, Some(format!("n{}", winners[0])));

    // Label patches race with the binding of another pod; every write succeeds. (Three, as
    // with four writers each loses at most three races, within PATCH's own retry budget.)
    pending_pod(&pods, "r").await;
    let patches = (0..3).map(|i| {
        let pods = pods.clone();
        async move {
            let labels: BTreeMap<String, String> = [(format!("l{i}"), "x".to_string())].into();
            let patch = json!({"metadata": {"labels": labels}});
            pods.patch("r", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    });
    let (pp, body) = (PostParams::default(), binding("r", "n9"));
    let bind = pods.create_subresource::<_, Value>("binding", "r", &pp, &body);
    let (patched, bound) = tokio::join!(join_all(patches), bind);
    bound.unwrap_or_else(|e| panic!("bind r: {e}; log:\n{}", server.log()));
    for p in patched {
        p.expect("label patch");
    }
    let r = pods.get("r").await.unwrap();
    assert_eq!(r.spec.unwrap().node_name.as_deref(), Some("n9"));
    assert_eq!(r.metadata.labels.unwrap().len(), 3);
}

/// An eviction is a graceful delete with the Eviction's delete options (no disruption budgets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_deletes_gracefully() {
    let server = TestApiserver::start();
    let client = server.client().await;
    namespace(&client, "e1").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "e1");
    pending_pod(&pods, "p").await;
    pods.create_subresource::<_, Value>(
        "binding",
        "p",
        &PostParams::default(),
        &binding("p", "n1"),
    )
    .await
    .expect("bind p");

    let status = pods
        .evict("p", &EvictParams::default())
        .await
        .unwrap_or_else(|e| panic!("evict p: {e}; log:\n{}", server.log()));
    assert_eq!(status.code, 201);
    // Bound to a node: marked with the pod's (default) grace period, not removed.
    let p = pods.get("p").await.expect("p is still there");
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));

    // kube-rs's `EvictParams::delete_options` goes out as `delete_options`, a field upstream
    // ignores as unknown (and so do we), so the grace period is posted as `deleteOptions`.
    let grace0 = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "p"}, "deleteOptions": {"gracePeriodSeconds": 0}});
    pods.create_subresource::<_, Value>("eviction", "p", &PostParams::default(), &grace0)
        .await
        .expect("evict p with grace 0");
    let err = pods.get("p").await.unwrap_err();
    assert_eq!(status_code(&err), Some(404), "{err}");
    let err = pods.evict("p", &EvictParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(404), "{err}");
}
