//! The pod-manager fixture shared by the agent's pod tests (`pods.rs`, `volumes.rs`, …): a
//! node made of its own containerd in an `nlt-` namespace, our apiserver and `pods::run` in the
//! test process, plus helpers to create pods and poll their status and events.
//!
//! Included with `#[path]` by each test file that needs it, after `mod support;`.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::time::{Duration, Instant};

use integration::TestApiserver;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use netlet_agent::cri::CriClient;
use netlet_agent::pods::{self, PodManagerConfig};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::containerd::{Containerd, TESTAPP_IMAGE};

/// The node name pods are bound to.
pub const NODE: &str = "node-a";
/// The pod subnet of the test node.
pub const SUBNET_PREFIX: [u8; 3] = [10, 88, 9];
/// The node IP the manager reports as hostIP (not routed anywhere: only reported).
pub const NODE_IP: &str = "192.0.2.10";

pub fn conflist(dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "nlt-pods",
        "plugins": [
            {
                "type": "netlet",
                "bridge": "nltpods0",
                "isDefaultGateway": true,
                "logFile": dir.join("netlet-cni.log"),
                "ipam": {
                    "type": "netlet",
                    "ranges": [[{ "subnet": "10.88.9.0/24" }]],
                    "dataDir": dir.join("ipam"),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
}

/// A node: containerd, an apiserver and the pod manager running against both.
pub struct Node {
    pub ctrd: Containerd,
    pub server: TestApiserver,
    pub client: Client,
    pub cri: CriClient,
    pub cancel: CancellationToken,
    pub manager: Option<JoinHandle<Result<(), pods::PodError>>>,
}

impl Node {
    pub async fn start(tag: &str) -> Self {
        integration::require_root();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "netlet_agent=info".into()),
            )
            .with_test_writer()
            .try_init();
        let ctrd = Containerd::start(tag, conflist).await;
        ctrd.import_images();
        let cri = ctrd.client().await;
        let server = TestApiserver::start();
        let client = server.client().await;
        let mut node = Self {
            ctrd,
            server,
            client,
            cri,
            cancel: CancellationToken::new(),
            manager: None,
        };
        node.start_manager();
        node
    }

    pub fn config(&self) -> PodManagerConfig {
        let mut config = PodManagerConfig::new(NODE);
        config.node_ip = Some(NODE_IP.parse().unwrap());
        config.pod_log_dir = self.ctrd.dir().join("pod-logs");
        config.cgroup_parent = self.ctrd.cgroup_parent.clone();
        config.pods_dir = self.ctrd.dir().join("pods");
        config
    }

    pub fn start_manager(&mut self) {
        self.cancel = CancellationToken::new();
        let run = pods::run(
            self.client.clone(),
            self.cri.clone(),
            self.config(),
            self.cancel.clone(),
        );
        self.manager = Some(tokio::spawn(run));
    }

    pub async fn stop_manager(&mut self) {
        self.cancel.cancel();
        if let Some(m) = self.manager.take() {
            m.await.unwrap().unwrap();
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub async fn create(&self, pod: serde_json::Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
    }

    /// Polls pod `name` every 200 ms until `check` accepts it, failing with the last status and
    /// the logs after `limit`.
    pub async fn wait_pod<T>(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Pod) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let pod = self.pods().get(name).await.unwrap();
            if let Some(v) = check(&pod) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}; status: {}\ncontainerd:\n{}",
                    serde_json::to_string_pretty(&pod.status).unwrap(),
                    self.ctrd.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The ConfigMap `settings` the sleeper pod's env reads.
    pub async fn settings(&self) {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), "default");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": "settings" }, "data": { "color": "blue" },
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), "default");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": "creds" }, "stringData": { "password": "s3cret" },
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// Waits until pod `name` runs; returns its container's id.
    pub async fn running(&self, name: &str) -> String {
        self.wait_pod(name, "Running", Duration::from_secs(60), |p| {
            let cs = status(p, "app")?;
            cs.state.as_ref()?.running.as_ref()?;
            cs.container_id.clone()
        })
        .await
    }

    /// Sandbox ids of the pod with `uid`.
    pub async fn sandboxes_of(&self, uid: &str) -> Vec<String> {
        let all = self.cri.list_pod_sandbox(None).await.unwrap();
        all.into_iter()
            .filter(|s| s.labels.get("io.kubernetes.pod.uid").map(String::as_str) == Some(uid))
            .map(|s| s.id)
            .collect()
    }

    /// Polls until the pod with `uid` has no sandbox left.
    pub async fn wait_no_sandbox(&self, uid: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.sandboxes_of(uid).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{what}: sandbox of {uid} still there"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn events(&self, pod: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(pod))
            .collect()
    }

    pub async fn reasons(&self, pod: &str) -> Vec<String> {
        self.events(pod)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Polls the event reasons of `pod` every 200 ms until all of `wanted` are there (the
    /// agent posts events from a background queue, so they may trail the status), failing
    /// with the reasons seen after 30 s; returns every reason.
    pub async fn reasons_including(&self, pod: &str, wanted: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reasons = self.reasons(pod).await;
            if wanted.iter().all(|w| reasons.iter().any(|r| r == w)) {
                return reasons;
            }
            assert!(
                Instant::now() < deadline,
                "events of {pod}: wanted {wanted:?}, have {reasons:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)
}

pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

pub fn waiting_reason(s: &ContainerStatus) -> Option<String> {
    s.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

/// A container that runs until SIGTERM, then exits 0 (its shell traps TERM between sleeps).
pub fn sleeper_pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "labels": { "app": name } },
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app",
                "image": TESTAPP_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c"],
                "args": ["trap 'exit 0' TERM; echo started $(POD_NAME); while true; do sleep 1; done"],
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                    { "name": "COLOR", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "color" } } },
                    { "name": "GREETING", "value": "hello-$(COLOR)" },
                    { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
                ],
            }],
        },
    })
}

pub async fn exec(cri: &CriClient, id: &str, script: &str) -> String {
    let r = cri
        .exec_sync(id, &["/bin/sh", "-c", script], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}
