//! Node IPAM and node lifecycle.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;

use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_allocates_distinct_blocks_releases_and_survives_restart() {
    let mut h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    for n in ["n1", "n2", "n3"] {
        create_node(&c, n).await;
    }
    let mut cidrs = BTreeMap::new();
    for n in ["n1", "n2", "n3"] {
        let cidr = h
            .wait(&format!("podCIDR of {n}"), || node_cidr(&c, n))
            .await;
        cidrs.insert(n, cidr);
    }
    let distinct: HashSet<_> = cidrs.values().cloned().collect();
    let expected: HashSet<String> = ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
        .map(String::from)
        .into();
    assert_eq!(
        distinct, expected,
        "three lowest /24s, each once: {cidrs:?}"
    );

    // Deleting n2 frees its block; the next node gets exactly that block (the lowest free).
    Api::<Node>::all(c.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    create_node(&c, "n4").await;
    let n4 = h.wait("podCIDR of n4", || node_cidr(&c, "n4")).await;
    assert_eq!(n4, cidrs["n2"], "n4 reuses n2's released block");

    // A restarted allocator re-derives the used set from the Nodes: no duplicate.
    h.stop_controllers();
    h.start_controllers(ControllersConfig::default());
    create_node(&c, "n5").await;
    let n5 = h.wait("podCIDR of n5", || node_cidr(&c, "n5")).await;
    assert_eq!(n5, "10.244.3.0/24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_reports_exhaustion_and_recovers() {
    let config = ControllersConfig {
        cluster_cidr: "10.9.0.0/23".parse().unwrap(),
        ..Default::default()
    };
    let h = Harness::start(config).await;
    let c = h.client.clone();
    create_node(&c, "a").await;
    create_node(&c, "b").await;
    let a = h.wait("podCIDR of a", || node_cidr(&c, "a")).await;
    h.wait("podCIDR of b", || node_cidr(&c, "b")).await;
    create_node(&c, "c").await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(c.clone());
    let note = h
        .wait("CIDRNotAvailable event for node c", || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("CIDRNotAvailable")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("c")
                })
                .and_then(|e| e.note)
        })
        .await;
    assert!(
        note.contains("10.9.0.0/23"),
        "event names the range: {note}"
    );
    assert_eq!(node_cidr(&c, "c").await, None);
    Api::<Node>::all(c.clone())
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let c_cidr = h
        .wait("podCIDR of c after a is gone", || node_cidr(&c, "c"))
        .await;
    assert_eq!(c_cidr, a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_is_tainted_and_its_pods_evicted_after_their_toleration() {
    let config = ControllersConfig {
        default_toleration_seconds: 1,
        ..Default::default()
    };
    let h = Harness::start(config).await;
    let c = h.client.clone();
    let nodes: Api<Node> = Api::all(c.clone());
    let heartbeat = |at: String| {
        json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": at, "lastTransitionTime": "2020-01-01T00:00:00Z"}]}})
    };
    for (name, at) in [
        ("silent", "2020-01-01T00:00:00Z".to_string()),
        ("alive", k8s_openapi::jiff::Timestamp::now().to_string()),
    ] {
        create_node(&c, name).await;
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(heartbeat(at)))
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for (pod, node, tolerations) in [
        ("p-default", "silent", json!([])),
        (
            "p-forever",
            "silent",
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]),
        ),
        ("p-alive", "alive", json!([])),
    ] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": pod},
            "spec": {"nodeName": node, "tolerations": tolerations, "containers": [{"name": "c", "image": "testapp"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let unreachable = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
    };
    let silent = h
        .wait("silent node tainted unreachable", || async {
            let n = nodes.get("silent").await.ok()?;
            unreachable(&n).then_some(n)
        })
        .await;
    let ready = silent
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("Unknown", Some("NodeStatusUnknown"))
    );
    h.wait(
        "p-default evicted after the default 1 s toleration",
        || async {
            pods.get("p-default")
                .await
                .ok()?
                .metadata
                .deletion_timestamp
                .map(|_| ())
        },
    )
    .await;
    assert!(
        pods.get("p-forever")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none(),
        "tolerates forever"
    );
    assert!(pods
        .get("p-alive")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_none());
    assert!(!unreachable(&nodes.get("alive").await.unwrap()));

    // The kubelet reports again: the taint goes.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            "silent",
            &PatchParams::default(),
            &Patch::Merge(heartbeat(now)),
        )
        .await
        .unwrap();
    h.wait("taint removed after a fresh heartbeat", || async {
        (!unreachable(&nodes.get("silent").await.ok()?)).then_some(())
    })
    .await;
}
