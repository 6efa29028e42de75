//! The pod manager: runs the pods bound to this node on the container runtime and reports
//! their status, the part of a kubelet that syncs pods.
//!
//! [`run`] watches the pods with `spec.nodeName=<node>` (a kube-rs watcher) and gives each pod
//! uid a worker task ([`worker`]) that converges the runtime to the pod and writes its status.
//! The manager itself only routes watch events to workers, tears down pods that vanish from
//! the API, and sweeps sandboxes of pods it no longer knows (e.g. deleted while the agent was
//! down). All runtime state is found again through labels, so the manager holds no state worth
//! persisting: a restarted agent re-adopts its pods' sandboxes and containers.
//!
//! # Layout
//! - [`labels`]: the labels linking runtime objects to pods.
//! - [`sandbox`], [`dns`]: the sandbox config (pure). [`container`], [`env`], [`resources`]:
//!   the container config (pure, except ConfigMap/Secret reads); [`service_env`]: the Service
//!   variables of the environment, from a Service reflector.
//! - [`poller`]: one runtime listing per interval for all pods. [`observed`]: the runtime's
//!   view of a pod's containers. [`status`]: the pod status
//!   computed from it (pure). [`backoff`]: CrashLoopBackOff delays.
//! - [`probe`]: startup, liveness and readiness probes. [`hooks`]: postStart and preStop
//!   hooks, and killing a container (preStop, then stop with the rest of the grace).
//! - [`volumes`]: emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes
//!   (service account tokens included) and the container mounts of `volumeMounts`.
//! - [`start_trace`]: per-pod start stage timings.
//! - [`events`]: core/v1 Events. [`worker`]: one pod's sync loop (its `start` submodule
//!   creates, starts and restarts containers). [`teardown`]: stopping
//!   pods and sweeping orphans.
//! - [`static_pods`]: pods from manifest files (`--pod-manifest-path`); `static_sync`: the
//!   manager's checks of them; [`mirror`]: their mirror pods in the API.
//!
//! # Limits
//! Images are never pulled: a container whose image is not in the runtime waits with
//! `ErrImageNeverPull` / `ErrImagePull`. HTTP and TCP probes connect from the agent's network
//! namespace (see [`probe`]); gRPC probes are unsupported. Volume kinds beyond those of
//! [`volumes`] fail the container that mounts them. Sandboxes
//! get the configured cgroup parent directly (no per-pod cgroup level).

pub mod backoff;
pub mod container;
pub mod dns;
pub mod env;
pub mod events;
pub mod hooks;
pub mod labels;
pub mod mirror;
pub mod observed;
pub mod poller;
pub mod probe;
pub mod resources;
pub mod sandbox;
pub mod service_env;
pub mod start_trace;
pub mod static_pods;
mod static_sync;
pub mod status;
pub mod teardown;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cri::{CriClient, CriError};
use backoff::BackoffPolicy;
use dns::ClusterDns;
use events::Recorder;
use static_pods::ManifestDir;
use static_sync::StaticPods;
use worker::Desired;

/// What the pod manager needs to know about its node.
#[derive(Debug, Clone)]
pub struct PodManagerConfig {
    /// This node's name: only pods bound to it are run.
    pub node_name: String,
    /// The node's IP, reported as `status.hostIP` and for `fieldRef: status.hostIP`.
    pub node_ip: Option<IpAddr>,
    /// Where container logs go (`<dir>/<ns>_<pod>_<uid>/<container>/<restarts>.log`).
    pub pod_log_dir: PathBuf,
    /// The cgroup parent of every sandbox.
    pub cgroup_parent: String,
    /// Where pod volumes live (`<dir>/<pod uid>/volumes/<plugin>/<volume>`), the kubelet's
    /// `/var/lib/kubelet/pods`.
    pub pods_dir: PathBuf,
    /// How often running pods' configMap, secret and downwardAPI volume files are compared with
    /// the API and rewritten when they changed (the kubelet takes up to about a minute).
    pub volume_refresh_interval: Duration,
    /// Cluster DNS addresses for `ClusterFirst` pods (empty: use the node's resolver).
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain for DNS search paths.
    pub cluster_domain: String,
    /// The node's resolv.conf, for `Default` DNS and as fallback.
    pub resolv_conf: PathBuf,
    /// The CRI runtime handler for sandboxes (empty: the runtime's default).
    pub runtime_handler: String,
    /// How often the runtime is polled and every pod re-synced (container exits are noticed
    /// then).
    pub resync_interval: Duration,
    /// Pods whose first start (sandbox, containers, status) runs at once; the rest queue in
    /// watch order. Unbounded, a burst of pods shares the CPU so that every pod of it becomes
    /// Ready near the end of the burst; bounded, the first ones are Ready early.
    pub parallel_pod_starts: usize,
    /// How often sandboxes of unknown pods are swept.
    pub orphan_sweep_interval: Duration,
    /// CrashLoopBackOff delays.
    pub backoff: BackoffPolicy,
    /// A directory of static pod manifests, run without the API (`None`: no static pods).
    pub pod_manifest_path: Option<PathBuf>,
    /// How often the manifests are re-read and the mirror pods checked.
    pub manifest_check_interval: Duration,
    /// Set to the number of pods with a worker (bound here, not yet torn down) as the manager
    /// runs; the caller keeps a clone to export it (the agent's metrics endpoint).
    pub managed_pods: Arc<AtomicUsize>,
}

impl PodManagerConfig {
    /// The node IP as the downward API's `status.hostIP` text (empty when unknown), shared by
    /// env vars and downwardAPI volume files.
    pub fn host_ip(&self) -> String {
        self.node_ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Defaults for node `node_name`: kubelet paths, 1 s resync, kubelet back-off.
    pub fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.into(),
            node_ip: None,
            pod_log_dir: PathBuf::from("/var/log/pods"),
            cgroup_parent: "/netlet-pods".into(),
            pods_dir: PathBuf::from("/var/lib/netlet/pods"),
            volume_refresh_interval: Duration::from_secs(10),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            runtime_handler: String::new(),
            resync_interval: Duration::from_secs(1),
            parallel_pod_starts: 4,
            orphan_sweep_interval: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
            pod_manifest_path: None,
            manifest_check_interval: Duration::from_secs(5),
            managed_pods: Arc::default(),
        }
    }
}

/// Errors that stop the pod manager.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The runtime did not answer at startup.
    #[error("the container runtime is not usable: {0}")]
    Runtime(#[source] CriError),
    /// The pod log directory could not be created.
    #[error("creating the pod log directory {path}: {source}")]
    LogDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Errors of one pod sync; logged, and the sync is retried at the next resync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A runtime call failed.
    #[error(transparent)]
    Cri(#[from] CriError),
    /// An API call about the pod failed.
    #[error("{op} pod {pod}: {source}")]
    Api {
        /// What was being done, e.g. `patching the status of`.
        op: &'static str,
        /// `namespace/name`.
        pod: String,
        /// The API error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
}

/// What every worker shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The runtime.
    pub cri: CriClient,
    /// Node settings.
    pub config: PodManagerConfig,
    /// Event writer.
    pub recorder: Recorder,
    /// DNS inputs, read once at startup.
    pub dns: ClusterDns,
    /// The node's runtime snapshots.
    pub snapshots: watch::Receiver<Arc<poller::Snapshot>>,
    /// Slots for pods starting (no ready sandbox yet), `config.parallel_pod_starts` of them.
    pub start_slots: Semaphore,
    /// The service account tokens of the pods' projected volumes.
    pub tokens: volumes::token::ServiceAccountTokens,
    /// The Services, for containers' environment variables.
    pub services: service_env::ServiceEnv,
}

/// A running worker.
struct Handle {
    desired: watch::Sender<Desired>,
    generation: u64,
    task: JoinHandle<()>,
}

/// Runs the pods bound to `config.node_name` until `cancel` fires. Pods keep running after
/// that (a restarted agent re-adopts them). Fails only if the runtime is unusable at startup.
pub async fn run(
    client: Client,
    cri: CriClient,
    config: PodManagerConfig,
    cancel: CancellationToken,
) -> Result<(), PodError> {
    cri.version().await.map_err(PodError::Runtime)?;
    std::fs::create_dir_all(&config.pod_log_dir).map_err(|source| PodError::LogDir {
        path: config.pod_log_dir.clone(),
        source,
    })?;
    let dns = ClusterDns {
        servers: config.cluster_dns.clone(),
        domain: config.cluster_domain.clone(),
        host_resolv_conf: std::fs::read_to_string(&config.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(
                "reading {}: {e}; pods get no DNS servers",
                config.resolv_conf.display()
            );
            String::new()
        }),
    };
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(poller::Snapshot::default()));
    let ctx = Arc::new(Context {
        snapshots,
        start_slots: Semaphore::new(config.parallel_pod_starts.max(1)),
        tokens: Default::default(),
        services: service_env::ServiceEnv::spawn(client.clone(), cancel.child_token()),
        recorder: Recorder::new(client.clone(), &config.node_name),
        client: client.clone(),
        cri,
        dns,
        config,
    });
    let selector = format!("spec.nodeName={}", ctx.config.node_name);
    let pods: Api<Pod> = Api::all(client);
    let stream = watcher(pods, watcher::Config::default().fields(&selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut manager = Manager {
        ctx: ctx.clone(),
        workers: HashMap::new(),
        next_generation: 0,
        cancel: cancel.child_token(),
        done_tx,
    };
    let poller = tokio::spawn(poller::run_poller(
        ctx.cri.clone(),
        ctx.config.resync_interval,
        snapshot_tx,
        manager.cancel.clone(),
    ));
    let mut statics = ctx
        .config
        .pod_manifest_path
        .clone()
        .map(|dir| StaticPods::new(ManifestDir::new(dir, &ctx.config.node_name)));
    // Before the first orphan sweep, so a restarted agent keeps its static pods' sandboxes.
    if let Some(s) = statics.as_mut() {
        manager.sync_static(s).await;
    }
    let mut manifest_check = tokio::time::interval(ctx.config.manifest_check_interval);
    manifest_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listing: Option<HashSet<String>> = None;
    let mut synced = false;
    let mut sweep = tokio::time::interval(ctx.config.orphan_sweep_interval);
    tracing::info!(node = %ctx.config.node_name, "pod manager running");
    loop {
        ctx.config
            .managed_pods
            .store(manager.workers.len(), Ordering::Relaxed);
        tokio::select! {
            () = cancel.cancelled() => break,
            Some((uid, generation)) = done_rx.recv() => {
                if manager.workers.get(&uid).is_some_and(|h| h.generation == generation) {
                    manager.workers.remove(&uid);
                }
            }
            _ = sweep.tick(), if synced => manager.sweep().await,
            _ = manifest_check.tick(), if statics.is_some() => {
                if let Some(s) = statics.as_mut() {
                    manager.sync_static(s).await;
                }
            }
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(pod))) => manager.apply(pod),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    manager.apply(pod);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = &pod.metadata.uid {
                        manager.gone(uid);
                    }
                }
                Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitDone)) => {
                    // Pods that disappeared while the watch was down.
                    let seen = listing.take().unwrap_or_default();
                    let vanished: Vec<String> = manager
                        .workers
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .filter(|uid| !statics.as_ref().is_some_and(|s| s.contains(uid)))
                        .cloned()
                        .collect();
                    for uid in vanished {
                        manager.gone(&uid);
                    }
                    if !synced {
                        synced = true;
                        manager.sweep().await;
                    }
                }
                Some(Err(e)) => tracing::warn!("watching pods on {}: {e}", ctx.config.node_name),
                None => break,
            },
        }
    }
    manager.cancel.cancel();
    for (_, h) in manager.workers.drain() {
        let _ = h.task.await;
    }
    let _ = poller.await;
    tracing::info!("pod manager stopped");
    Ok(())
}

/// The manager's routing state.
struct Manager {
    ctx: Arc<Context>,
    workers: HashMap<String, Handle>,
    next_generation: u64,
    cancel: CancellationToken,
    /// Workers report `(uid, generation)` here when they end.
    done_tx: mpsc::UnboundedSender<(String, u64)>,
}

impl Manager {
    /// Hands `pod` to its worker, starting one if needed.
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        // A mirror pod is only the API's view of a static pod, which runs from its file.
        if static_pods::is_mirror(&pod) {
            return;
        }
        let pod = Arc::new(pod);
        if let Some(h) = self.workers.get(&uid) {
            h.desired.send_replace(Desired::Present(pod));
            return;
        }
        let (tx, rx) = watch::channel(Desired::Present(pod));
        let generation = self.next_generation;
        self.next_generation += 1;
        let ctx = self.ctx.clone();
        let cancel = self.cancel.clone();
        let done = self.done_tx.clone();
        let task_uid = uid.clone();
        let seen = std::time::Instant::now();
        let task = tokio::spawn(async move {
            worker::run_worker(ctx, rx, cancel, seen).await;
            let _ = done.send((task_uid, generation));
        });
        self.workers.insert(
            uid,
            Handle {
                desired: tx,
                generation,
                task,
            },
        );
    }

    /// Tells the worker of `uid` that its pod is gone from the API.
    fn gone(&mut self, uid: &str) {
        if let Some(h) = self.workers.get(uid) {
            let pod = match &*h.desired.borrow() {
                Desired::Present(p) | Desired::Gone(p) => p.clone(),
            };
            h.desired.send_replace(Desired::Gone(pod));
        }
    }

    /// Removes sandboxes of pods no worker owns.
    async fn sweep(&mut self) {
        let live: HashSet<String> = self.workers.keys().cloned().collect();
        match teardown::sweep_orphans(&self.ctx, &live).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed sandboxes of pods no longer in the API")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("sweeping orphaned sandboxes: {e}"),
        }
    }
}
