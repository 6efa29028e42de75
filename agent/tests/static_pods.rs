//! Static pods from a manifest directory, run by the pod manager on a real containerd, and
//! their mirror pods in our apiserver (fixture: `support/pod_node.rs`, with the manager
//! restarted on a config that has a manifest directory).

#[path = "support/pod_node.rs"]
mod pod_node;
#[allow(dead_code)] // this binary does not inspect mounts or shim sockets
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use netlet_agent::pods;
use pod_node::*;
use support::containerd::TESTAPP_IMAGE;
use tokio_util::sync::CancellationToken;

/// The static pod's manifest: a container that runs until SIGTERM.
fn manifest(greeting: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {TESTAPP_IMAGE}
    command: ["/bin/sh", "-c"]
    args: ["trap 'exit 0' TERM; echo {greeting}; while true; do sleep 1; done"]
"#
    )
}

/// Restarts the node's pod manager with static pods from `dir`, checked every second.
async fn restart_with_manifests(node: &mut Node, dir: &Path) {
    node.stop_manager().await;
    let mut config = node.config();
    config.pod_manifest_path = Some(dir.into());
    config.manifest_check_interval = Duration::from_secs(1);
    node.cancel = CancellationToken::new();
    let run = pods::run(
        node.client.clone(),
        node.cri.clone(),
        config,
        node.cancel.clone(),
    );
    node.manager = Some(tokio::spawn(run));
}

/// Polls the mirror pod until `check` accepts it (or its absence, as `None`).
async fn wait_mirror<T>(
    node: &Node,
    what: &str,
    mut check: impl FnMut(Option<&Pod>) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mirror = node.pods().get_opt(MIRROR).await.unwrap();
        if let Some(v) = check(mirror.as_ref()) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; mirror: {}\n{}",
            serde_json::to_string_pretty(&mirror).unwrap(),
            node.ctrd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The static pod's name: `<name>-<node>`.
const MIRROR: &str = "web-node-a";

/// A running mirror pod's (uid, static pod hash, container id).
fn running_mirror(p: Option<&Pod>) -> Option<(String, String, String)> {
    let p = p?;
    let cs = status(p, "app")?;
    cs.state.as_ref()?.running.as_ref()?;
    let hash = p
        .metadata
        .annotations
        .as_ref()?
        .get("kubernetes.io/config.mirror")?
        .clone();
    Some((p.metadata.uid.clone()?, hash, cs.container_id.clone()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pod_runs_from_its_manifest_with_a_mirror_that_comes_back_and_goes_with_it() {
    let mut node = Node::start("static").await;
    // The mirror pod is owned by the Node, so the Node must be registered.
    let nodes: Api<NodeObject> = Api::all(node.client.clone());
    let registered = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": NODE } })).unwrap(),
        )
        .await
        .unwrap();
    let manifests = node.ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let file = manifests.join("web.yaml");
    std::fs::write(&file, manifest("hello")).unwrap();
    restart_with_manifests(&mut node, &manifests).await;

    // The static pod runs and its mirror reports it Running.
    let (mirror_uid, hash, container) =
        wait_mirror(&node, "a Running mirror pod", running_mirror).await;
    let mirror = node.pods().get(MIRROR).await.unwrap();
    let annotations = mirror.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["kubernetes.io/config.source"], "file");
    assert_eq!(annotations["kubernetes.io/config.hash"], hash);
    assert!(annotations.contains_key("kubernetes.io/config.seen"));
    assert_eq!(mirror.metadata.labels.clone().unwrap()["app"], "web");
    let owner = &mirror.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", NODE));
    assert_eq!(Some(&owner.uid), registered.metadata.uid.as_ref());
    assert_eq!(
        mirror.spec.as_ref().unwrap().node_name.as_deref(),
        Some(NODE)
    );
    assert_eq!(
        mirror.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert_ne!(mirror_uid, hash, "the mirror has its own uid");
    // The runtime's pod is the static pod: its uid is the manifest's hash.
    assert_eq!(node.sandboxes_of(&hash).await.len(), 1);

    // Deleting the mirror through the API does not stop the static pod: the mirror comes
    // back, reporting the same container, not restarted.
    node.pods()
        .delete(MIRROR, &DeleteParams::default())
        .await
        .unwrap();
    let (new_uid, new_hash, new_container) = wait_mirror(&node, "a new Running mirror pod", |p| {
        running_mirror(p).filter(|(uid, _, _)| *uid != mirror_uid)
    })
    .await;
    assert_eq!(new_hash, hash);
    assert_eq!(
        new_container, container,
        "the static pod's container changed"
    );
    let mirror = node.pods().get(MIRROR).await.unwrap();
    assert_eq!(status(&mirror, "app").unwrap().restart_count, 0);
    assert!(mirror.metadata.deletion_timestamp.is_none());
    assert_eq!(node.sandboxes_of(&hash).await.len(), 1);
    assert_ne!(new_uid, mirror_uid);

    // Removing the manifest stops the pod and deletes the mirror.
    std::fs::remove_file(&file).unwrap();
    node.wait_no_sandbox(&hash, "after the manifest was removed")
        .await;
    wait_mirror(&node, "the mirror pod to go", |p| p.is_none().then_some(())).await;
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_manifest_restarts_the_static_pod_with_the_new_spec() {
    let mut node = Node::start("stchg").await;
    let nodes: Api<NodeObject> = Api::all(node.client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": NODE } })).unwrap(),
        )
        .await
        .unwrap();
    let manifests = node.ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let file = manifests.join("web.yaml");
    std::fs::write(&file, manifest("first")).unwrap();
    restart_with_manifests(&mut node, &manifests).await;
    let (_, old_hash, _) = wait_mirror(&node, "a Running mirror pod", running_mirror).await;

    std::fs::write(&file, manifest("second")).unwrap();
    let (_, new_hash, container) = wait_mirror(&node, "the new version's mirror", |p| {
        running_mirror(p).filter(|(_, hash, _)| *hash != old_hash)
    })
    .await;
    assert!(container.starts_with("containerd://"), "{container}");
    // The new container runs the new spec: its log (under the new uid) says so.
    let log = node
        .ctrd
        .dir()
        .join(format!("pod-logs/default_{MIRROR}_{new_hash}/app/0.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("second")
    {
        assert!(
            Instant::now() < deadline,
            "no \"second\" in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.wait_no_sandbox(&old_hash, "after the manifest changed")
        .await;
    assert_eq!(node.sandboxes_of(&new_hash).await.len(), 1);
    node.stop_manager().await;
}
