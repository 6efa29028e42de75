//! The scheduler against the real `netlet-control-plane serve` (`integration::TestApiserver`,
//! started with `--disable-scheduler` so only the scheduler under test binds pods, and
//! `--disable-controllers` because the garbage collector would delete the test pods, whose
//! owner is a made-up ReplicaSet uid), except `serve_schedules_in_process`, which checks the
//! scheduler `serve` runs itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use integration::{create_namespace as namespace, TestApiserver};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use netlet_control_plane::scheduler::{self, SchedulerConfig};
use serde_json::{json, Value};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Limit for every wait below: generous, a slow machine only makes a failing test slower.
const WAIT: Duration = Duration::from_secs(60);

async fn start() -> (TestApiserver, Client) {
    let server = TestApiserver::start_with(&["--disable-scheduler", "--disable-controllers"]);
    let client = server.client().await;
    (server, client)
}

/// Runs our scheduler until the guard drops.
fn run_scheduler(client: &Client) -> DropGuard {
    let token = CancellationToken::new();
    let child = token.clone();
    let client = client.clone();
    tokio::spawn(async move {
        scheduler::run(client, SchedulerConfig::default(), child)
            .await
            .expect("scheduler");
    });
    token.drop_guard()
}

/// Creates a Ready node with `allocatable`, `labels` and `taints`.
async fn node(client: &Client, name: &str, allocatable: Value, labels: Value, taints: Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &n)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    let status = json!({"status": {
        "allocatable": allocatable.clone(),
        "capacity": allocatable,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("set status of node {name}: {e}"));
}

fn alloc(cpu: &str, pods: u32) -> Value {
    json!({"cpu": cpu, "memory": "16Gi", "pods": pods.to_string()})
}

async fn pod(client: &Client, ns: &str, name: &str, spec: Value, owner: Option<&str>) {
    let mut spec = spec;
    spec["containers"] = spec.get("containers").cloned().unwrap_or_else(
        || json!([{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]),
    );
    let refs = owner.map(|uid| {
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid,
            "controller": true}])
    });
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": refs},
        "spec": spec,
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Polls until pod `ns/name` is bound; returns its node.
async fn wait_bound(client: &Client, server: &TestApiserver, ns: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let p = pods.get(name).await.expect("get pod");
        if let Some(n) = node_of(&p) {
            return n.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "pod {ns}/{name} not bound: {:?}\nlog:\n{}",
            p.status,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until pod `ns/name` has a `reason` event saying `want`. (The scheduler's node and pod
/// watches are separate streams, so a first attempt may run before it has seen the nodes and
/// report fewer of them; the retry after the nodes arrive reports them all.)
async fn wait_message(client: &Client, ns: &str, name: &str, reason: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = wait_event(client, ns, name, reason).await;
        if messages.iter().any(|m| m == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event saying {want:?} for {ns}/{name}: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until pod `ns/name` has an event with `reason`; returns its messages so far.
async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        let messages: Vec<String> = list
            .items
            .iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
            .filter_map(|e| e.message.clone())
            .collect();
        if !messages.is_empty() {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event for {ns}/{name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pods of `ns` per node ("" = unbound).
async fn placement(client: &Client, ns: &str) -> BTreeMap<String, usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut per_node = BTreeMap::new();
    for p in pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
    {
        *per_node
            .entry(node_of(&p).unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    per_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_across_three_nodes() {
    let (server, client) = start().await;
    namespace(&client, "spread").await;
    for n in ["n1", "n2", "n3"] {
        node(&client, n, alloc("4", 110), json!({}), json!([])).await;
    }
    // Started after the nodes exist: its initial list has all three before any pod is decided
    // (node and pod watches are separate streams with no order between them).
    let _scheduler = run_scheduler(&client);
    for i in 0..6 {
        pod(
            &client,
            "spread",
            &format!("web-{i}"),
            json!({}),
            Some("rs-uid-1"),
        )
        .await;
    }
    for i in 0..6 {
        wait_bound(&client, &server, "spread", &format!("web-{i}")).await;
    }
    let per_node = placement(&client, "spread").await;
    assert_eq!(
        per_node,
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)])
    );
    let node = wait_bound(&client, &server, "spread", "web-0").await;
    let messages = wait_event(&client, "spread", "web-0", "Scheduled").await;
    assert_eq!(
        messages,
        vec![format!("Successfully assigned spread/web-0 to {node}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_big_pod_fails_then_fits_a_bigger_node() {
    let (server, client) = start().await;
    let _scheduler = run_scheduler(&client);
    namespace(&client, "big").await;
    node(&client, "n1", alloc("1", 110), json!({}), json!([])).await;
    node(&client, "n2", alloc("1", 110), json!({}), json!([])).await;
    let taint = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    node(&client, "n3", alloc("8", 110), json!({}), taint).await;
    let spec = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "2"}}}]});
    pod(&client, "big", "huge", spec, None).await;

    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 Insufficient cpu.";
    wait_message(&client, "big", "huge", "FailedScheduling", want).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "big");
    let deadline = Instant::now() + WAIT;
    loop {
        let p = pods.get("huge").await.expect("get pod");
        let cond = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled").cloned());
        if let Some(c) = cond.filter(|c| c.message.as_deref() == Some(want)) {
            assert_eq!(c.status, "False");
            assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no PodScheduled condition: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node_of(&pods.get("huge").await.unwrap()), None);

    node(&client, "n4", alloc("4", 110), json!({}), json!([])).await;
    assert_eq!(wait_bound(&client, &server, "big", "huge").await, "n4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taints_tolerations_and_node_selectors() {
    let (server, client) = start().await;
    namespace(&client, "sel").await;
    let taint = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    node(&client, "gpu", alloc("4", 110), json!({"hw": "gpu"}), taint).await;
    node(
        &client,
        "b",
        alloc("4", 110),
        json!({"zone": "b"}),
        json!([]),
    )
    .await;
    node(
        &client,
        "c",
        alloc("4", 110),
        json!({"zone": "c"}),
        json!([]),
    )
    .await;
    // After the nodes, as in the spread test.
    let _scheduler = run_scheduler(&client);

    let tolerate = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu",
        "effect": "NoSchedule"}]);
    pod(
        &client,
        "sel",
        "trainer",
        json!({"tolerations": tolerate,
        "nodeSelector": {"hw": "gpu"}}),
        None,
    )
    .await;
    pod(
        &client,
        "sel",
        "in-b",
        json!({"nodeSelector": {"zone": "b"}}),
        None,
    )
    .await;
    pod(
        &client,
        "sel",
        "affine-c",
        json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}]}}}}),
        None,
    )
    .await;
    pod(
        &client,
        "sel",
        "no-toleration",
        json!({"nodeSelector": {"hw": "gpu"}}),
        None,
    )
    .await;
    for i in 0..6 {
        pod(&client, "sel", &format!("plain-{i}"), json!({}), None).await;
    }
    assert_eq!(wait_bound(&client, &server, "sel", "trainer").await, "gpu");
    assert_eq!(wait_bound(&client, &server, "sel", "in-b").await, "b");
    assert_eq!(wait_bound(&client, &server, "sel", "affine-c").await, "c");
    for i in 0..6 {
        let n = wait_bound(&client, &server, "sel", &format!("plain-{i}")).await;
        assert_ne!(n, "gpu", "plain-{i} landed on the tainted node");
    }
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 node(s) didn't match Pod's node affinity/selector.";
    wait_message(&client, "sel", "no-toleration", "FailedScheduling", want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_never_overcommits_pod_slots() {
    let (server, client) = start().await;
    namespace(&client, "burst").await;
    for n in ["n1", "n2", "n3"] {
        node(&client, n, alloc("64", 50), json!({}), json!([])).await;
    }
    // Pods exist before the scheduler starts, so it sees all 200 at once.
    let created = Instant::now();
    stream::iter(0..200)
        .for_each_concurrent(16, |i| {
            let client = client.clone();
            async move { pod(&client, "burst", &format!("p-{i}"), json!({}), None).await }
        })
        .await;
    let create_time = created.elapsed();
    let started = Instant::now();
    let _scheduler = run_scheduler(&client);
    let deadline = Instant::now() + WAIT;
    let per_node = loop {
        let per_node = placement(&client, "burst").await;
        if per_node.get("").copied() == Some(50) && per_node.len() == 4 {
            break per_node;
        }
        for (n, count) in &per_node {
            assert!(
                n.is_empty() || *count <= 50,
                "node {n} has {count} pods: {per_node:?}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "burst not placed: {per_node:?}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    assert_eq!(
        per_node,
        BTreeMap::from([
            ("".into(), 50),
            ("n1".into(), 50),
            ("n2".into(), 50),
            ("n3".into(), 50)
        ])
    );
    eprintln!(
        "created 200 pods in {create_time:?}; 150 bound (50 unschedulable) in {elapsed:?} \
         (includes the scheduler's initial list and polling)"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "burst");
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let unbound = list.items.iter().find(|p| node_of(p).is_none()).unwrap();
    let name = unbound.metadata.name.as_deref().unwrap();
    let want = "0/3 nodes are available: 3 Too many pods.";
    wait_message(&client, "burst", name, "FailedScheduling", want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_schedules_in_process() {
    let server = TestApiserver::start();
    let client = server.client().await;
    namespace(&client, "inproc").await;
    node(&client, "n1", alloc("4", 110), json!({}), json!([])).await;
    pod(&client, "inproc", "p", json!({}), None).await;
    assert_eq!(wait_bound(&client, &server, "inproc", "p").await, "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_subcommand_with_custom_name_and_leader_election() {
    let (server, client) = start().await;
    let log_path = server.dir().join("scheduler.log");
    let log = std::fs::File::create(&log_path).expect("scheduler log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_netlet-control-plane"))
        .arg("scheduler")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["--scheduler-name", "custom", "--leader-elect=true"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start netlet-control-plane scheduler");
    let _guard = integration::ChildGuard::new(child);
    namespace(&client, "cli").await;
    node(&client, "n1", alloc("4", 110), json!({}), json!([])).await;
    pod(
        &client,
        "cli",
        "mine",
        json!({"schedulerName": "custom"}),
        None,
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "cli");
    while node_of(&pods.get("mine").await.expect("get pod")).is_none() {
        assert!(
            Instant::now() < deadline,
            "not bound; scheduler log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It scheduled while holding its own Lease, named after the scheduler.
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "kube-system")
            .get("custom")
            .await
            .expect("lease kube-system/custom");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.contains(&format!("_{}_", _guard.id())),
        "holder {holder}"
    );
}

/// Creates pod `ns/name` with `labels` and `affinity`.
async fn affine_pod(client: &Client, ns: &str, name: &str, labels: Value, affinity: Value) {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"affinity": affinity, "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
}

/// Required pod anti-affinity by hostname puts three replicas on three nodes and leaves a
/// fourth unschedulable, saying why; required pod affinity puts a pod beside its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_affinity_and_anti_affinity_by_hostname() {
    let (server, client) = start().await;
    namespace(&client, "aff").await;
    for n in ["n1", "n2", "n3"] {
        node(
            &client,
            n,
            alloc("4", 110),
            json!({"kubernetes.io/hostname": n}),
            json!([]),
        )
        .await;
    }
    let _scheduler = run_scheduler(&client);
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    let mut placed = std::collections::BTreeSet::new();
    for i in 0..3 {
        let labels = if i == 0 {
            json!({"app": "db", "role": "primary"})
        } else {
            json!({"app": "db"})
        };
        let name = format!("db-{i}");
        affine_pod(&client, "aff", &name, labels, anti.clone()).await;
        placed.insert(wait_bound(&client, &server, "aff", &name).await);
    }
    assert_eq!(placed.len(), 3, "one db per node: {placed:?}");
    affine_pod(&client, "aff", "db-3", json!({"app": "db"}), anti).await;
    wait_message(
        &client,
        "aff",
        "db-3",
        "FailedScheduling",
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
    )
    .await;
    let primary = wait_bound(&client, &server, "aff", "db-0").await;
    affine_pod(
        &client,
        "aff",
        "web",
        json!({"app": "web"}),
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"role": "primary"}},
             "topologyKey": "kubernetes.io/hostname"}]}}),
    )
    .await;
    assert_eq!(wait_bound(&client, &server, "aff", "web").await, primary);
}
