//! One pod's worker: converges what the runtime runs for the pod to its spec, and reports
//! its status, until the pod is deleted.
//!
//! Each sync lists the pod's sandboxes by uid label (which is also how a restarted agent
//! re-adopts them), creates the sandbox if none is ready, runs init containers one at a time
//! to completion, then starts app containers, restarts exited ones as the restart policy and
//! back-off allow, runs due probes, and writes the status when it changed. Syncs run on every
//! change of the pod and on every runtime snapshot of the node's poller (each resync interval,
//! 1 s by default), which is how container exits are noticed. A deleted pod's containers get their remaining grace period, then the sandbox goes
//! (containerd runs CNI DEL) and the deletion is confirmed to the apiserver.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::events::EventType::{Normal, Warning};
use super::hooks::kill_container;
use super::labels::uid_selector;
use super::observed::{Observed, StatusCache};
use super::poller::Snapshot;
use super::probe::Prober;
use super::sandbox::sandbox_config;
use super::start_trace::StartTrace;
use super::static_pods::is_static;
use super::status::{is_terminal, pod_status, StatusInput, Waiting};
use super::teardown::{kill_sandbox, MIN_GRACE};
use super::{Context, SyncError};
use crate::cri::api;

mod start;
mod volume_refresh;

/// What the manager wants for a pod.
#[derive(Debug, Clone)]
pub enum Desired {
    /// The pod as last seen in the API.
    Present(Arc<Pod>),
    /// The pod vanished from the API (last seen as given): tear it down.
    Gone(Arc<Pod>),
}

/// The sandbox the worker runs containers in.
#[derive(Debug, Clone)]
struct Sandbox {
    id: String,
    config: api::PodSandboxConfig,
    ip: String,
}

/// The state a worker keeps between syncs.
struct Worker {
    ctx: Arc<Context>,
    cache: StatusCache,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<Waiting>,
    backoff: HashMap<String, Backoff>,
    waiting: HashMap<String, Waiting>,
    readiness: HashMap<String, bool>,
    started: HashMap<String, bool>,
    prober: Prober,
    /// Warnings already posted as events, so a waiting container is not reported every sync.
    reported: HashSet<String>,
    last_written: Option<PodStatus>,
    /// Runtime snapshots of the node's poller.
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// When this worker last finished changing the runtime: older snapshots do not show it.
    last_change: Option<Instant>,
    /// The current sync changed the runtime.
    dirty: bool,
    /// Failed sandbox creations in a row, and when to try again.
    sandbox_failures: u32,
    sandbox_retry_at: Option<Instant>,
    /// When the pod's configMap/secret/downwardAPI volume files were last refreshed.
    volumes_refreshed_at: Option<Instant>,
    /// Start stage timings, logged when the pod is first reported Ready.
    trace: StartTrace,
}

/// Runs the worker of one pod until it is torn down or `cancel` fires (then its containers
/// keep running: a restarted agent re-adopts them).
/// `seen` is when the pod's watch event reached the manager (for the start trace).
pub async fn run_worker(
    ctx: Arc<Context>,
    mut desired: watch::Receiver<Desired>,
    cancel: CancellationToken,
    seen: Instant,
) {
    let mut w = Worker {
        trace: StartTrace::new(seen),
        snapshots: ctx.snapshots.clone(),
        last_change: None,
        dirty: false,
        sandbox_failures: 0,
        sandbox_retry_at: None,
        volumes_refreshed_at: None,
        ctx,
        cache: StatusCache::default(),
        sandbox: None,
        sandbox_error: None,
        backoff: HashMap::new(),
        waiting: HashMap::new(),
        readiness: HashMap::new(),
        started: HashMap::new(),
        prober: Prober::default(),
        reported: HashSet::new(),
        last_written: None,
    };
    let mut last_pod: Option<Arc<Pod>> = None;
    loop {
        let want = desired.borrow_and_update().clone();
        if let Desired::Present(pod) = &want {
            // A static pod handed over again has a new mirror pod, without our status.
            if is_static(pod) && last_pod.as_ref().is_some_and(|p| !Arc::ptr_eq(p, pod)) {
                w.last_written = None;
            }
            last_pod = Some(pod.clone());
        }
        let (pod, result) = match want {
            Desired::Present(pod) => {
                let r = w.sync(&pod).await;
                (pod, r)
            }
            Desired::Gone(pod) => {
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30);
                let r = w.kill(&pod, secs(grace)).await.map(|()| true);
                (pod, r)
            }
        };
        // Only a poll that starts after the changes are complete shows them.
        if std::mem::take(&mut w.dirty) {
            w.last_change = Some(Instant::now());
        }
        match result {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(pod = %key(&pod), "sync failed: {e}"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = desired.changed() => if changed.is_err() { return },
            // A new runtime snapshot, normally every resync interval.
            _ = w.snapshots.changed() => {}
            // Should the poller stall (runtime down), still retry now and then.
            () = tokio::time::sleep(w.ctx.config.resync_interval * 5) => {}
        }
    }
}

impl Worker {
    /// One sync of a pod present in the API; `Ok(true)` once it is deleted and confirmed.
    async fn sync(&mut self, pod: &Pod) -> Result<bool, SyncError> {
        if pod.metadata.deletion_timestamp.is_some() {
            self.kill(pod, remaining_grace(pod)).await?;
            self.confirm_deletion(pod).await?;
            return Ok(true);
        }
        self.trace.mark("sync");
        let ctx = self.ctx.clone();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let snapshot = self.snapshots.borrow_and_update().clone();
        let current = snapshot.newer_than(self.last_change);
        let mut sandboxes = if current {
            snapshot.sandboxes.get(&uid).cloned().unwrap_or_default()
        } else {
            ctx.cri
                .list_pod_sandbox(Some(api::PodSandboxFilter {
                    label_selector: uid_selector(&uid),
                    ..Default::default()
                }))
                .await?
        };
        sandboxes.sort_by_key(|s| std::cmp::Reverse(attempt(s)));
        let ready = sandboxes
            .iter()
            .find(|s| s.state() == api::PodSandboxState::SandboxReady);
        let phase = self
            .last_written
            .as_ref()
            .or(pod.status.as_ref())
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if is_terminal(&phase) {
            // Nothing runs in a finished pod again: free its network, keep its status.
            if let Some(s) = ready {
                self.touch();
                kill_sandbox(&ctx, pod, &s.id, MIN_GRACE, false).await?;
            }
            return Ok(false);
        }
        // A starting pod waits for a start slot, held until its status is written.
        let _slot = match ready {
            Some(_) => None,
            None => {
                let slot = ctx.start_slots.acquire().await.ok();
                self.trace.mark("start slot");
                slot
            }
        };
        let sandbox = match ready {
            Some(s) => self.adopt(pod, s).await?,
            None => {
                let next = sandboxes.first().map_or(0, |s| attempt(s) + 1);
                match self.create_sandbox(pod, next).await {
                    Some(s) => s,
                    None => {
                        self.write_status(pod, None).await?;
                        return Ok(false);
                    }
                }
            }
        };
        for stale in sandboxes.iter().filter(|s| s.id != sandbox.id) {
            self.touch();
            kill_sandbox(&ctx, pod, &stale.id, MIN_GRACE, true).await?;
        }
        let observed = match snapshot.containers.get(&sandbox.id).filter(|_| current) {
            Some(listed) => self.cache.observe_listed(&ctx.cri, listed).await?,
            None if current => self.cache.observe_listed(&ctx.cri, &[]).await?,
            None => self.cache.observe(&ctx.cri, &sandbox.id).await?,
        };
        let mut changed = self.converge(pod, &sandbox, &observed).await;
        changed |= self.probe(pod, &sandbox, &observed).await;
        self.refresh_volumes(pod, &sandbox).await;
        let observed = if changed {
            self.cache.observe(&ctx.cri, &sandbox.id).await?
        } else {
            observed
        };
        self.trace.mark("observed");
        self.write_status(pod, Some(&observed)).await?;
        Ok(false)
    }

    /// Takes over a ready sandbox found by label (ours from an earlier sync, or one a previous
    /// run of the agent created).
    async fn adopt(&mut self, pod: &Pod, s: &api::PodSandbox) -> Result<Sandbox, SyncError> {
        if let Some(current) = self.sandbox.as_ref().filter(|c| c.id == s.id) {
            return Ok(current.clone());
        }
        let ctx = self.ctx.clone();
        let status = ctx.cri.pod_sandbox_status(&s.id).await?;
        let sandbox = Sandbox {
            id: s.id.clone(),
            config: sandbox_config(pod, &ctx.config, &ctx.dns, attempt(s)),
            ip: pod_ip(pod, &ctx, status.network),
        };
        tracing::info!(pod = %key(pod), sandbox = %s.id, ip = %sandbox.ip, "using sandbox");
        self.sandbox = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// Runs a new sandbox; on failure records why (status and a FailedCreatePodSandBox event).
    async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Option<Sandbox> {
        if self.sandbox_retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        self.touch();
        let ctx = self.ctx.clone();
        let config = sandbox_config(pod, &ctx.config, &ctx.dns, attempt);
        let created = async {
            std::fs::create_dir_all(&config.log_directory)
                .map_err(|e| format!("creating log directory {}: {e}", config.log_directory))?;
            let id = ctx
                .cri
                .run_pod_sandbox(config.clone(), &ctx.config.runtime_handler)
                .await
                .map_err(|e| e.to_string())?;
            let status = ctx
                .cri
                .pod_sandbox_status(&id)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(Sandbox {
                id,
                config: config.clone(),
                ip: pod_ip(pod, &ctx, status.network),
            })
        }
        .await;
        match created {
            Ok(s) => {
                self.trace.mark("sandbox running");
                tracing::info!(pod = %key(pod), sandbox = %s.id, ip = %s.ip, "sandbox running");
                self.sandbox_error = None;
                self.sandbox_failures = 0;
                self.sandbox_retry_at = None;
                self.sandbox = Some(s.clone());
                Some(s)
            }
            Err(message) => {
                tracing::warn!(pod = %key(pod), "creating the sandbox failed: {message}");
                // Retry after 1, 2, 4 … s, at most a minute: a broken CNI setup should not
                // turn into a RunPodSandbox and an event every second.
                let delay = Duration::from_secs(1 << self.sandbox_failures.min(6));
                self.sandbox_failures += 1;
                self.sandbox_retry_at = Some(Instant::now() + delay);
                let msg = format!("Failed to create pod sandbox: {message}");
                ctx.recorder
                    .emit(pod, None, Warning, "FailedCreatePodSandBox", &msg);
                self.sandbox_error = Some(Waiting {
                    reason: "ContainerCreating".into(),
                    message: msg,
                });
                None
            }
        }
    }

    /// Starts what should run; returns whether anything was created or started.
    async fn converge(&mut self, pod: &Pod, sb: &Sandbox, observed: &Observed) -> bool {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        for c in spec.init_containers.iter().flatten() {
            match observed.latest(&c.name) {
                Some(i) if i.exited() && i.exit_code == 0 => continue,
                // Init containers restart on failure unless the policy is Never.
                Some(i) if i.exited() && policy != "Never" => {
                    return self.restart(pod, sb, c, i, observed).await;
                }
                Some(i) if i.exited() => return false,
                Some(i) if i.running() => return false,
                Some(i) => return self.start_created(pod, c, i).await,
                None => return self.start(pod, sb, c, 0).await,
            }
        }
        let mut changed = false;
        for c in &spec.containers {
            changed |= match observed.latest(&c.name) {
                None => self.start(pod, sb, c, 0).await,
                Some(i) if i.running() => {
                    self.waiting.remove(&c.name);
                    false
                }
                Some(i) if i.exited() => {
                    let again = match policy {
                        "Never" => false,
                        "OnFailure" => i.exit_code != 0,
                        _ => true,
                    };
                    if again {
                        self.restart(pod, sb, c, i, observed).await
                    } else {
                        self.waiting.remove(&c.name);
                        false
                    }
                }
                Some(i) => self.start_created(pod, c, i).await,
            };
        }
        changed
    }

    /// Notes that this sync changes the runtime: until a poll starts after the sync ends, the
    /// worker lists for itself.
    fn touch(&mut self) {
        self.dirty = true;
        self.last_change = Some(Instant::now());
    }

    /// Runs the due probes of running app containers; kills those whose startup or liveness
    /// probe failed. Returns whether it killed any.
    async fn probe(&mut self, pod: &Pod, sb: &Sandbox, observed: &Observed) -> bool {
        let ctx = self.ctx.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut killed = false;
        for c in &spec.containers {
            let Some(i) = observed.latest(&c.name).filter(|i| i.running()) else {
                self.readiness.remove(&c.name);
                self.started.remove(&c.name);
                continue;
            };
            let v = self.prober.probe(&ctx.cri, c, i, &sb.ip).await;
            self.readiness.insert(c.name.clone(), v.ready);
            self.started.insert(c.name.clone(), v.started);
            for msg in &v.unhealthy {
                ctx.recorder
                    .emit(pod, Some(&c.name), Warning, "Unhealthy", msg);
            }
            if let Some(why) = v.kill {
                ctx.recorder
                    .emit(pod, Some(&c.name), Normal, "Killing", &why);
                self.touch();
                let grace = spec.termination_grace_period_seconds.unwrap_or(30);
                match kill_container(&ctx, pod, &c.name, &i.id, secs(grace).max(MIN_GRACE)).await {
                    Ok(()) => killed = true,
                    Err(e) => {
                        tracing::warn!(pod = %key(pod), container = %c.name, "{why}: stopping: {e}")
                    }
                }
            }
        }
        killed
    }

    /// Computes the status and writes it if it differs from the last one written.
    async fn write_status(
        &mut self,
        pod: &Pod,
        observed: Option<&Observed>,
    ) -> Result<(), SyncError> {
        let mut base = pod.clone();
        if let Some(last) = &self.last_written {
            base.status = Some(last.clone());
        }
        let input = StatusInput {
            observed,
            waiting: self.waiting.clone(),
            readiness: self.readiness.clone(),
            started: self.started.clone(),
            pod_ip: self.sandbox.as_ref().map(|s| s.ip.clone()),
            host_ip: self.ctx.config.node_ip.map(|ip| ip.to_string()),
            sandbox_error: self.sandbox_error.clone(),
        };
        let status = pod_status(&base, &input);
        if base.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let (ns, name) = ns_name(pod);
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let patch = serde_json::json!({ "status": status });
        let written = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if let Err(kube::Error::Api(e)) = &written {
            if e.code == 404 && is_static(pod) {
                // No mirror pod (yet): the manager creates one and hands the pod over again.
                tracing::debug!(pod = %key(pod), "no mirror pod to write the status to");
                return Ok(());
            }
        }
        written.map_err(|source| SyncError::Api {
            op: "patching the status of",
            pod: key(pod),
            source: Box::new(source),
        })?;
        tracing::debug!(pod = %key(pod), phase = ?status.phase, "status written");
        if is_ready(&status) {
            if let Some(stages) = self.trace.finish() {
                tracing::info!(pod = %key(pod), "ready after watch event: {stages}");
            }
        }
        self.last_written = Some(status);
        Ok(())
    }

    /// Stops every container of the pod with `grace`, then its sandboxes.
    async fn kill(&mut self, pod: &Pod, grace: Duration) -> Result<(), SyncError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let sandboxes = self
            .ctx
            .cri
            .list_pod_sandbox(Some(api::PodSandboxFilter {
                label_selector: uid_selector(&uid),
                ..Default::default()
            }))
            .await?;
        for s in sandboxes {
            kill_sandbox(&self.ctx, pod, &s.id, grace, true).await?;
        }
        self.sandbox = None;
        self.remove_volumes(pod);
        Ok(())
    }

    /// Tells the apiserver the pod's containers are gone: delete with grace 0, for this uid
    /// only (a new pod of the same name must not be deleted by mistake).
    async fn confirm_deletion(&self, pod: &Pod) -> Result<(), SyncError> {
        let (ns, name) = ns_name(pod);
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(pod = %key(pod), "deleted");
                Ok(())
            }
            // Already gone, or replaced by a pod with another uid: nothing left to confirm.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(source) => Err(SyncError::Api {
                op: "confirming the deletion of",
                pod: key(pod),
                source: Box::new(source),
            }),
        }
    }
}

/// Whether `status` says the pod is Ready.
fn is_ready(status: &PodStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The grace a deleted pod's containers still have: until its deletionTimestamp, at least
/// the kubelet's minimum of 2 s.
fn remaining_grace(pod: &Pod) -> Duration {
    let left = pod
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second() - k8s_openapi::jiff::Timestamp::now().as_second())
        .unwrap_or(0);
    secs(left).max(MIN_GRACE)
}

/// The pod's IP: the sandbox's, or the node's for a host-network pod (whose sandbox has none
/// of its own).
fn pod_ip(pod: &Pod, ctx: &Context, network: Option<api::PodSandboxNetworkStatus>) -> String {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    match (host_network, ctx.config.node_ip) {
        (true, Some(ip)) => ip.to_string(),
        _ => network.map(|n| n.ip).unwrap_or_default(),
    }
}

/// Whole seconds as a duration (negative: zero).
fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// The attempt number of a sandbox.
fn attempt(s: &api::PodSandbox) -> u32 {
    s.metadata.as_ref().map_or(0, |m| m.attempt)
}

/// `namespace` and `name` of a pod.
fn ns_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// `namespace/name` of a pod, for logs and errors.
pub fn key(pod: &Pod) -> String {
    let (ns, name) = ns_name(pod);
    format!("{ns}/{name}")
}
