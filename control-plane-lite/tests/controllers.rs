//! The controllers against our real apiserver. No kubelets run: the tests play the nodes' part
//! (bind pods by patching `spec.nodeName`, report them Running/Ready with a pod IP through the
//! status subresource, and finish graceful deletions).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use integration::TestApiserver;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
        // Controller logs with RUST_LOG=netlet_control_plane=debug (captured per test).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
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

/// Reports the pod Running with `ip`, Ready or not (the kubelet's status update).
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("status of pod {name}: {e}"));
}

/// (ip, ready, terminating) of every endpoint in the service's slices, sorted.
async fn slice_view(client: &Client, svc: &str) -> Vec<(String, bool, bool, Vec<i32>)> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap();
    let mut view = Vec::new();
    for s in list.items {
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Service", svc));
        let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
        for e in s.endpoints.into_iter().flatten() {
            let c = e.conditions.unwrap();
            assert!(e.target_ref.is_some() && e.node_name.as_deref() == Some("n1"));
            view.push((
                e.addresses[0].clone(),
                c.ready.unwrap(),
                c.terminating.unwrap(),
                ports.clone(),
            ));
        }
    }
    view.sort();
    view
}

/// (ready IPs, not-ready IPs, ports) of the service's core/v1 Endpoints.
async fn endpoints_view(
    client: &Client,
    svc: &str,
) -> Option<(Vec<String>, Vec<String>, Vec<i32>)> {
    let ep = Api::<Endpoints>::namespaced(client.clone(), "default")
        .get(svc)
        .await
        .ok()?;
    let (mut ready, mut not_ready, mut ports) = (Vec::new(), Vec::new(), Vec::new());
    for s in ep.subsets.into_iter().flatten() {
        ready.extend(s.addresses.into_iter().flatten().map(|a| a.ip));
        not_ready.extend(s.not_ready_addresses.into_iter().flatten().map(|a| a.ip));
        ports.extend(s.ports.into_iter().flatten().map(|p| p.port));
    }
    ready.sort();
    not_ready.sort();
    Some((ready, not_ready, ports))
}

fn web_pod(name: &str, port: i32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "testapp",
                 "ports": [{"name": "http", "containerPort": port}]}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness_and_resolve_named_ports() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &web_pod("a", 8080))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &web_pod("b", 8080))
        .await
        .unwrap();
    set_status(&pods, "a", "10.244.0.10", true).await;
    set_status(&pods, "b", "10.244.0.11", true).await;
    let both_ready = vec![
        ("10.244.0.10".to_string(), true, false, vec![8080]),
        ("10.244.0.11".to_string(), true, false, vec![8080]),
    ];
    h.wait(
        "both pods ready in the slice on the named port 8080",
        || async { (slice_view(&c, "web").await == both_ready).then_some(()) },
    )
    .await;
    h.wait("both pods in Endpoints", || async {
        let v = endpoints_view(&c, "web").await?;
        (v == (
            vec!["10.244.0.10".into(), "10.244.0.11".into()],
            vec![],
            vec![8080],
        ))
            .then_some(())
    })
    .await;

    // b turns not ready: its address moves to not-ready in both APIs.
    set_status(&pods, "b", "10.244.0.11", false).await;
    h.wait("b not ready in the slice", || async {
        let v = slice_view(&c, "web").await;
        (v.iter().any(|e| e.0 == "10.244.0.11" && !e.1)
            && v.iter().any(|e| e.0 == "10.244.0.10" && e.1))
        .then_some(())
    })
    .await;
    h.wait("b in notReadyAddresses", || async {
        let v = endpoints_view(&c, "web").await?;
        (v.0 == ["10.244.0.10"] && v.1 == ["10.244.0.11"]).then_some(())
    })
    .await;

    // A pod whose "http" port is another number lands in its own port group.
    pods.create(&PostParams::default(), &web_pod("d", 9090))
        .await
        .unwrap();
    set_status(&pods, "d", "10.244.0.12", true).await;
    h.wait("d on port 9090", || async {
        slice_view(&c, "web")
            .await
            .iter()
            .any(|e| e.0 == "10.244.0.12" && e.3 == [9090])
            .then_some(())
    })
    .await;

    // Graceful deletion of a bound pod: terminating in the slice, gone from Endpoints.
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    h.wait("a terminating in the slice", || async {
        slice_view(&c, "web")
            .await
            .iter()
            .any(|e| e.0 == "10.244.0.10" && !e.1 && e.2)
            .then_some(())
    })
    .await;
    h.wait("a gone from Endpoints", || async {
        let v = endpoints_view(&c, "web").await?;
        (!v.0.contains(&"10.244.0.10".to_string())).then_some(())
    })
    .await;

    // The label no longer matching takes d out as well.
    pods.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    h.wait("relabelled d leaves the slice", || async {
        (!slice_view(&c, "web")
            .await
            .iter()
            .any(|e| e.0 == "10.244.0.12"))
        .then_some(())
    })
    .await;
}

/// Plays the kubelet of node `n1` for every pod in "default": binds unbound pods, reports bound
/// ones Running with an IP (and Ready when `auto_ready`), and finishes graceful deletions.
fn spawn_kubelet(client: Client, auto_ready: bool, cancel: CancellationToken) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut next_ip = 2u32;
        while !cancel.is_cancelled() {
            for pod in pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let name = pod.metadata.name.clone().unwrap();
                if pod.metadata.deletion_timestamp.is_some() {
                    let _ = pods
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_none()
                {
                    let _ = pods
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
                        )
                        .await;
                    continue;
                }
                if pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_ref())
                    .is_none()
                {
                    let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
                    next_ip += 1;
                    let status = json!({"status": {"phase": "Running", "podIP": ip,
                        "conditions": [{"type": "Ready", "status": if auto_ready { "True" } else { "False" }}]}});
                    let _ = pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
}

/// Pods in "default" with `label` that are not being deleted.
async fn active_pods(client: &Client, label: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(label))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn set_replicas<K>(api: &Api<K>, name: &str, n: i32)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    )
    .await
    .unwrap_or_else(|e| panic!("scale {name} to {n}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_scales_adopts_and_heals() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut orphan = web_pod("orphan", 8080);
    orphan.metadata.labels = Some([("app".to_string(), "rs".to_string())].into());
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "rs1"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "rs"}},
                 "template": {"metadata": {"labels": {"app": "rs", "tier": "x"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    let uid = rss
        .create(&PostParams::default(), &rs)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();

    // `cap`: most active pods allowed while converging (no extra pods from an event burst).
    let expect = |want: usize, cap: usize| {
        let (c, uid) = (c.clone(), uid.clone());
        move || {
            let (c, uid) = (c.clone(), uid.clone());
            async move {
                let active = active_pods(&c, "app=rs").await;
                assert!(
                    active.len() <= cap,
                    "{} active pods, cap {cap}",
                    active.len()
                );
                let owned = active.iter().all(|p| {
                    p.metadata.owner_references.iter().flatten().any(|r| {
                        r.uid == uid
                            && r.controller == Some(true)
                            && r.block_owner_deletion == Some(true)
                    })
                });
                let status = rss_status(&c).await?;
                (active.len() == want
                    && owned
                    && status.replicas == want as i32
                    && status.ready_replicas == Some(want as i32)
                    && status.available_replicas == Some(want as i32))
                .then_some(active)
            }
        }
    };
    let active = h
        .wait("3 ready pods incl. the adopted orphan", expect(3, 3))
        .await;
    assert!(active
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("orphan")));
    for p in active
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some("orphan"))
    {
        let name = p.metadata.name.as_deref().unwrap();
        assert!(
            name.starts_with("rs1-") && name.len() == "rs1-".len() + 5,
            "pod name {name}"
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()["tier"], "x");
    }
    let status = rss.get("rs1").await.unwrap().status.unwrap();
    assert_eq!(
        (status.fully_labeled_replicas, status.observed_generation),
        (Some(2), Some(1)),
        "the orphan lacks tier=x"
    );

    set_replicas(&rss, "rs1", 5).await;
    h.wait("scaled up to 5", expect(5, 5)).await;
    set_replicas(&rss, "rs1", 2).await;
    let two = h.wait("scaled down to 2", expect(2, 5)).await;

    // Self-healing: a deleted pod is replaced.
    let victim = two[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let healed = h
        .wait("a replacement for the deleted pod", || async {
            let active = expect(2, 2)().await?;
            (!active
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(victim.as_str())))
            .then_some(active)
        })
        .await;
    assert_eq!(healed.len(), 2);
    assert_eq!(
        rss.get("rs1")
            .await
            .unwrap()
            .status
            .unwrap()
            .observed_generation,
        Some(3)
    );
}

async fn rss_status(c: &Client) -> Option<k8s_openapi::api::apps::v1::ReplicaSetStatus> {
    Api::<ReplicaSet>::namespaced(c.clone(), "default")
        .get("rs1")
        .await
        .ok()?
        .status
}

/// Pod counts the rollout test's watcher saw break the bounds, as messages.
type Violations = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Follows every pod event with label app=dep and records states with more than `max_pods`
/// active pods or (once `armed`) fewer than `min_ready` ready active pods.
fn watch_bounds(
    client: Client,
    max_pods: usize,
    min_ready: usize,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
) -> Violations {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let violations: Violations = Default::default();
    let out = violations.clone();
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, "default");
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut stream =
            watcher::watcher(api, watcher::Config::default().labels("app=dep")).boxed();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                Some(Ok(Event::Apply(p) | Event::InitApply(p))) => {
                    pods.insert(p.metadata.name.clone().unwrap(), p);
                }
                Some(Ok(Event::Delete(p))) => {
                    pods.remove(p.metadata.name.as_deref().unwrap());
                }
                Some(Ok(Event::Init)) => pods.clear(),
                Some(Ok(Event::InitDone)) | Some(Err(_)) => {}
                None => return,
            }
            let active: Vec<&Pod> = pods
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready = active.iter().filter(|p| is_ready(p)).count();
            if active.len() > max_pods {
                out.lock()
                    .unwrap()
                    .push(format!("{} active pods > {max_pods}", active.len()));
            }
            if armed.load(std::sync::atomic::Ordering::SeqCst) && ready < min_ready {
                out.lock()
                    .unwrap()
                    .push(format!("{ready} ready pods < {min_ready}"));
            }
        }
    });
    violations
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Marks at most one active, bound, not-ready pod with label app=dep Ready (one kubelet step).
async fn ready_one(c: &Client) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pending = active_pods(c, "app=dep")
        .await
        .into_iter()
        .find(|p| !is_ready(p) && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
    if let Some(p) = pending {
        let ip = p.status.unwrap().pod_ip.unwrap();
        let name = p.metadata.name.unwrap();
        let status =
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": ip}});
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await;
    }
}

/// Whether the deployment's status says its rollout finished (what `kubectl rollout status` checks).
async fn rolled_out(c: &Client, name: &str, replicas: i32) -> Option<Deployment> {
    let d = Api::<Deployment>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .ok()?;
    let s = d.status.clone()?;
    let progressing = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"))?;
    (s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && progressing.reason.as_deref() == Some("NewReplicaSetAvailable"))
    .then_some(d)
}

fn kubectl(h: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(h.server.kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolling_update_stays_within_surge_and_unavailable() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    // Pods get bound and an IP but turn Ready only when the test says so.
    spawn_kubelet(c.clone(), false, h.cancel.clone());
    let (replicas, surge, unavailable) = (4usize, 1usize, 1usize);
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let violations = watch_bounds(
        c.clone(),
        replicas + surge,
        replicas - unavailable,
        armed.clone(),
        h.cancel.clone(),
    );
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "annotations": {"kubernetes.io/change-cause": "v1"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "dep"}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                 "template": {"metadata": {"labels": {"app": "dep"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp:v1"}]}}}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    h.wait("first rollout", || async {
        ready_one(&c).await;
        rolled_out(&c, "web", replicas as i32).await
    })
    .await;
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let first = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(first.len(), 1);
    let rs1 = &first[0];
    let hash1 = rs1.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        rs1.metadata.name.as_deref(),
        Some(format!("web-{hash1}").as_str())
    );
    assert_eq!(
        rs1.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );

    // Roll to v2 one readiness at a time; the watcher checks every intermediate state.
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "testapp:v2"}]}}}})),
    )
    .await
    .unwrap();
    let done = h
        .wait("rollout to v2", || async {
            ready_one(&c).await;
            let v = violations.lock().unwrap().clone();
            assert!(v.is_empty(), "rollout left its bounds: {v:?}");
            rolled_out(&c, "web", replicas as i32).await
        })
        .await;
    assert_eq!(
        done.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let all = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 2, "the old ReplicaSet is kept for rollback");
    for rs in &all {
        let hash = &rs.metadata.labels.as_ref().unwrap()["pod-template-hash"];
        let rev = &rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"];
        if *hash == hash1 {
            assert_eq!((rev.as_str(), rs.spec.replicas), ("1", Some(0)));
        } else {
            assert_eq!((rev.as_str(), rs.spec.replicas), ("2", Some(4)));
        }
    }
    let pods = active_pods(&c, "app=dep").await;
    assert_eq!(pods.len(), replicas);
    assert!(pods
        .iter()
        .all(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"] != hash1));

    // The stock kubectl agrees the rollout finished and lists both revisions.
    let out = kubectl(
        &h,
        &["rollout", "status", "deployment/web", "--timeout=20s"],
    );
    assert!(
        out.status.success(),
        "kubectl rollout status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(&h, &["rollout", "history", "deployment/web"]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && history.contains("v1") && history.contains("v2"),
        "history: {history}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recreate_history_limit_and_undo() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "rc"},
        "spec": {"replicas": 2, "revisionHistoryLimit": 1, "selector": {"matchLabels": {"app": "rc"}},
                 "strategy": {"type": "Recreate"},
                 "template": {"metadata": {"labels": {"app": "rc"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp:v1"}]}}}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    h.wait("v1 rolled out", || rolled_out(&c, "rc", 2)).await;
    let set_image = |image: &'static str| {
        let deps = deps.clone();
        async move {
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
            deps.patch("rc", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    // (revision, spec.replicas, image) of every ReplicaSet, by revision.
    let sets = || async {
        let mut v: Vec<(i64, i32, String)> = rss
            .list(&ListParams::default().labels("app=rc"))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|rs| {
                let rev = rs.metadata.annotations.as_ref().unwrap()
                    ["deployment.kubernetes.io/revision"]
                    .parse()
                    .unwrap();
                let image = rs.spec.template.unwrap().spec.unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap();
                (rev, rs.spec.replicas.unwrap(), image)
            })
            .collect();
        v.sort();
        v
    };
    set_image("testapp:v2").await;
    h.wait("v2 rolled out", || rolled_out(&c, "rc", 2)).await;
    assert_eq!(
        sets().await,
        [(1, 0, "testapp:v1".into()), (2, 2, "testapp:v2".into())]
    );
    set_image("testapp:v3").await;
    h.wait(
        "v3 rolled out and v1 cleaned up (revisionHistoryLimit 1)",
        || async {
            rolled_out(&c, "rc", 2).await?;
            let v = sets().await;
            (v == [(2, 0, "testapp:v2".into()), (3, 2, "testapp:v3".into())]).then_some(())
        },
    )
    .await;
    let images: HashSet<String> = active_pods(&c, "app=rc")
        .await
        .into_iter()
        .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
        .collect();
    assert_eq!(images, HashSet::from(["testapp:v3".to_string()]));

    // kubectl rollout undo brings v2's ReplicaSet back as revision 4.
    let out = kubectl(&h, &["rollout", "undo", "deployment/rc"]);
    assert!(
        out.status.success(),
        "rollout undo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.wait("undo to v2 as revision 4", || async {
        rolled_out(&c, "rc", 2).await?;
        let v = sets().await;
        (v == [(3, 0, "testapp:v3".into()), (4, 2, "testapp:v2".into())]).then_some(())
    })
    .await;
    let v2 = rss
        .list(&ListParams::default().labels("app=rc"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|rs| rs.spec.replicas == Some(2))
        .unwrap();
    assert_eq!(
        v2.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("2"),
        "v2's ReplicaSet reused: {v2:?}\ndeployment: {:?}",
        deps.get("rc").await.unwrap()
    );
}

/// Finishes every running pod of job `job` with `phase` (the containers exiting); returns how
/// many active pods the job had.
async fn finish_job_pods(c: &Client, job: &str, phase: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let active = active_pods(c, &format!("batch.kubernetes.io/job-name={job}"))
        .await
        .into_iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect::<Vec<_>>();
    for p in &active {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            let status = json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": "False"}]}});
            let _ = pods
                .patch_status(
                    p.metadata.name.as_deref().unwrap(),
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await;
        }
    }
    active.len()
}

async fn job_condition(
    c: &Client,
    job: &str,
    type_: &str,
) -> Option<k8s_openapi::api::batch::v1::JobStatus> {
    let status = Api::<Job>::namespaced(c.clone(), "default")
        .get(job)
        .await
        .ok()?
        .status?;
    let done = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True");
    done.then_some(status)
}

fn job(name: &str, completions: i32, parallelism: i32, backoff: i32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
                 "template": {"spec": {"restartPolicy": "Never",
                              "containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_to_completion_within_parallelism_and_fails_past_backoff_limit() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &job("ok", 3, 2, 6))
        .await
        .unwrap();
    let status = h
        .wait("job ok Complete", || async {
            let active = finish_job_pods(&c, "ok", "Succeeded").await;
            assert!(active <= 2, "{active} active pods > parallelism 2");
            job_condition(&c, "ok", "Complete").await
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(3), Some(0), Some(0))
    );
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let all = Api::<Pod>::namespaced(c.clone(), "default")
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=ok"))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 3, "exactly completions pods were run");

    jobs.create(&PostParams::default(), &job("bad", 1, 1, 1))
        .await
        .unwrap();
    let status = h
        .wait("job bad Failed", || async {
            finish_job_pods(&c, "bad", "Failed").await;
            job_condition(&c, "bad", "Failed").await
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed),
        (Some(0), Some(2)),
        "one try plus backoffLimit 1 retry"
    );
    let cond = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(cond.reason.as_deref(), Some("BackoffLimitExceeded"));
}

/// Node names the active daemon pods (label app=ds) are pinned to by their required node
/// affinity `matchFields metadata.name In [node]`, sorted.
async fn daemon_targets(c: &Client) -> Vec<String> {
    let mut nodes: Vec<String> = active_pods(c, "app=ds")
        .await
        .into_iter()
        .map(|p| {
            let affinity = p
                .spec
                .unwrap()
                .affinity
                .expect("daemon pod has an affinity");
            let terms = affinity
                .node_affinity
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .unwrap()
                .node_selector_terms;
            let field = &terms[0].match_fields.as_ref().unwrap()[0];
            assert_eq!(
                (field.key.as_str(), field.operator.as_str()),
                ("metadata.name", "In")
            );
            field.values.as_ref().unwrap()[0].clone()
        })
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_places_one_pod_per_eligible_node() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let nodes: Api<Node> = Api::all(c.clone());
    for (name, node) in [
        (
            "n1",
            json!({"metadata": {"name": "n1", "labels": {"disk": "ssd"}}}),
        ),
        (
            "n2",
            json!({"metadata": {"name": "n2", "labels": {"disk": "ssd"}},
                      "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}}),
        ),
        ("n3", json!({"metadata": {"name": "n3"}})),
    ] {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(node).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    }
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "ds"},
        "spec": {"selector": {"matchLabels": {"app": "ds"}},
                 "template": {"metadata": {"labels": {"app": "ds"}},
                              "spec": {"nodeSelector": {"disk": "ssd"},
                                       "containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let targets = |want: &'static [&'static str]| {
        let c = c.clone();
        move || {
            let c = c.clone();
            async move { (daemon_targets(&c).await == want).then_some(()) }
        }
    };
    h.wait(
        "a pod for n1 only (n2 tainted, n3 unlabelled)",
        targets(&["n1"]),
    )
    .await;

    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .unwrap();
    h.wait("n3 gets a pod once labelled", targets(&["n1", "n3"]))
        .await;
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
    h.wait("n2 gets a pod once untainted", targets(&["n1", "n2", "n3"]))
        .await;
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    h.wait("n1's pod goes with the node", targets(&["n2", "n3"]))
        .await;

    // The test plays the kubelets: the daemon pods turn ready; the status follows.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for (i, p) in active_pods(&c, "app=ds").await.iter().enumerate() {
        set_status(
            &pods,
            p.metadata.name.as_deref().unwrap(),
            &format!("10.244.9.{}", i + 1),
            true,
        )
        .await;
    }
    let status = h
        .wait("daemonset status with 2 ready", || async {
            let s = Api::<DaemonSet>::namespaced(c.clone(), "default")
                .get("ds")
                .await
                .ok()?
                .status?;
            (s.number_ready == 2).then_some(s)
        })
        .await;
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_available
        ),
        (2, 2, Some(2))
    );
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
