//! The controllers against our real apiserver. No kubelets run: the tests play the nodes' part
//! (bind pods by patching `spec.nodeName`, report them Running/Ready with a pod IP through the
//! status subresource, and finish graceful deletions).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use integration::TestApiserver;
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
async fn bind(pods: &Api<Pod>, name: &str, node: &str) {
    pods.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodeName": node}})),
    )
    .await
    .unwrap_or_else(|e| panic!("bind pod {name}: {e}"));
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
async fn endpoints_view(client: &Client, svc: &str) -> Option<(Vec<String>, Vec<String>, Vec<i32>)> {
    let ep = Api::<Endpoints>::namespaced(client.clone(), "default").get(svc).await.ok()?;
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
    pods.create(&PostParams::default(), &web_pod("a", 8080)).await.unwrap();
    pods.create(&PostParams::default(), &web_pod("b", 8080)).await.unwrap();
    set_status(&pods, "a", "10.244.0.10", true).await;
    set_status(&pods, "b", "10.244.0.11", true).await;
    let both_ready = vec![
        ("10.244.0.10".to_string(), true, false, vec![8080]),
        ("10.244.0.11".to_string(), true, false, vec![8080]),
    ];
    h.wait("both pods ready in the slice on the named port 8080", || async {
        (slice_view(&c, "web").await == both_ready).then_some(())
    })
    .await;
    h.wait("both pods in Endpoints", || async {
        let v = endpoints_view(&c, "web").await?;
        (v == (vec!["10.244.0.10".into(), "10.244.0.11".into()], vec![], vec![8080])).then_some(())
    })
    .await;

    // b turns not ready: its address moves to not-ready in both APIs.
    set_status(&pods, "b", "10.244.0.11", false).await;
    h.wait("b not ready in the slice", || async {
        let v = slice_view(&c, "web").await;
        (v.iter().any(|e| e.0 == "10.244.0.11" && !e.1) && v.iter().any(|e| e.0 == "10.244.0.10" && e.1))
            .then_some(())
    })
    .await;
    h.wait("b in notReadyAddresses", || async {
        let v = endpoints_view(&c, "web").await?;
        (v.0 == ["10.244.0.10"] && v.1 == ["10.244.0.11"]).then_some(())
    })
    .await;

    // A pod whose "http" port is another number lands in its own port group.
    pods.create(&PostParams::default(), &web_pod("d", 9090)).await.unwrap();
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
    pods.patch("d", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})))
        .await
        .unwrap();
    h.wait("relabelled d leaves the slice", || async {
        (!slice_view(&c, "web").await.iter().any(|e| e.0 == "10.244.0.12")).then_some(())
    })
    .await;
}
