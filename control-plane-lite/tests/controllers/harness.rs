//! The apiserver + controllers harness and the node-side helpers the tests play kubelet with.

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
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// The apiserver, a client, and the controllers running until drop.
pub(crate) struct Harness {
    pub(crate) server: TestApiserver,
    pub(crate) client: Client,
    pub(crate) cancel: CancellationToken,
}

impl Harness {
    pub(crate) async fn start(config: ControllersConfig) -> Self {
        // Controller logs with RUST_LOG=netlet_control_plane=debug (captured per test).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        // `serve` runs its own controllers by default; the tests run theirs (with their
        // config, stoppable), so the server's are disabled to avoid two sets acting at once.
        let server = TestApiserver::start_with(&["--disable-controllers", "--disable-scheduler"]);
        // The simulated kubelet binds pods itself; serve's scheduler would race it with
        // FailedScheduling status writes (there are no Node objects to schedule onto).
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

    pub(crate) fn start_controllers(&mut self, config: ControllersConfig) {
        self.cancel = CancellationToken::new();
        let (client, cancel) = (self.client.clone(), self.cancel.clone());
        tokio::spawn(async move {
            controllers::run(client, config, cancel)
                .await
                .expect("controllers run");
        });
    }

    pub(crate) fn stop_controllers(&self) {
        self.cancel.cancel();
    }

    /// Polls `check` until it returns `Some`, failing after [`DEADLINE`] with `what` and the log.
    pub(crate) async fn wait<T, F, Fut>(&self, what: &str, mut check: F) -> T
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

pub(crate) async fn create_node(client: &Client, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
}

pub(crate) async fn node_cidr(client: &Client, name: &str) -> Option<String> {
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

/// Reports the pod Running with `ip`, Ready or not (the kubelet's status update).
pub(crate) async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("status of pod {name}: {e}"));
}

/// Removes `pod` if its deletion is pending (the kubelet confirming a graceful delete);
/// whether it was.
pub(crate) async fn finish_deletion(pods: &Api<Pod>, pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_none() {
        return false;
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let _ = pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await;
    true
}

/// Plays the kubelet of node `n1` for every pod in "default": binds unbound pods, reports bound
/// ones Running with an IP (and Ready when `auto_ready`), and finishes graceful deletions.
pub(crate) fn spawn_kubelet(client: Client, auto_ready: bool, cancel: CancellationToken) {
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
                if finish_deletion(&pods, &pod).await {
                    continue;
                }
                let name = pod.metadata.name.clone().unwrap();
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
pub(crate) async fn active_pods(client: &Client, label: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(label))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

pub(crate) async fn set_replicas<K>(api: &Api<K>, name: &str, n: i32)
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

pub(crate) fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn kubectl(h: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(h.server.kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl")
}

/// A pod labelled app=web on n1 whose container port "http" is `port`.
pub(crate) fn web_pod(name: &str, port: i32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "testapp",
                 "ports": [{"name": "http", "containerPort": port}]}]}
    }))
    .unwrap()
}
