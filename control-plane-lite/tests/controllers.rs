//! The controllers against our real apiserver. No kubelets run: the tests play the nodes' part
//! (bind pods by patching `spec.nodeName`, report them Running/Ready with a pod IP through the
//! status subresource, and finish graceful deletions).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use integration::TestApiserver;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::{self, ControllersConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long any one expectation may take before the test fails with the server log.
const DEADLINE: Duration = Duration::from_secs(30);

/// The apiserver, a client, and the controllers running until drop.
struct Harness {
    server: TestApiserver,
    client: Client,
    cancel: CancellationToken,
}

impl Harness {
    async fn start(config: ControllersConfig) -> Self {
        let server = TestApiserver::start();
        let client = server.client().await;
        let cancel = CancellationToken::new();
        let mut h = Self {
            server,
            client,
            cancel,
        };
        h.start_controllers(config);
        h
    }

    fn start_controllers(&mut self, config: ControllersConfig) {
        self.cancel = CancellationToken::new();
        let (client, cancel) = (self.client.clone(), self.cancel.clone());
        tokio::spawn(async move {
            controllers::run(client, config, cancel)
                .await
                .expect("controllers run");
        });
    }

    fn stop_controllers(&self) {
        self.cancel.cancel();
    }

    /// Polls `check` until it returns `Some`, failing after [`DEADLINE`] with `what` and the log.
    async fn wait<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log:\n{}",
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn create_node(client: &Client, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
}

async fn node_cidr(client: &Client, name: &str) -> Option<String> {
    let node = Api::<Node>::all(client.clone()).get(name).await.ok()?;
    let spec = node.spec?;
    let cidr = spec.pod_cidr?;
    assert_eq!(
        spec.pod_cidrs.as_deref(),
        Some(std::slice::from_ref(&cidr)),
        "podCIDRs of {name} should be [podCIDR]"
    );
    Some(cidr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_allocates_distinct_blocks_releases_and_survives_restart() {
    let mut h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    for n in ["n1", "n2", "n3"] {
        create_node(&c, n).await;
    }
    let mut cidrs = BTreeMap::new();
    for n in ["n1", "n2", "n3"] {
        let cidr = h.wait(&format!("podCIDR of {n}"), || node_cidr(&c, n)).await;
        cidrs.insert(n, cidr);
    }
    let distinct: HashSet<_> = cidrs.values().cloned().collect();
    let expected: HashSet<String> = ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
        .map(String::from)
        .into();
    assert_eq!(distinct, expected, "three lowest /24s, each once: {cidrs:?}");

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
    assert!(note.contains("10.9.0.0/23"), "event names the range: {note}");
    assert_eq!(node_cidr(&c, "c").await, None);
    Api::<Node>::all(c.clone())
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let c_cidr = h.wait("podCIDR of c after a is gone", || node_cidr(&c, "c")).await;
    assert_eq!(c_cidr, a);
}

/// Patches `spec.nodeName` onto an unbound pod (what the scheduler's binding would do).
#[allow(dead_code)]
async fn bind(pods: &Api<Pod>, name: &str, node: &str) {
    pods.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodeName": node}})),
    )
    .await
    .unwrap_or_else(|e| panic!("bind pod {name}: {e}"));
}
