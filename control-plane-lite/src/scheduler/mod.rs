//! The Kubernetes scheduler as an ordinary API client: it watches Nodes and Pods, keeps an
//! in-memory [`cache::Cache`] of nodes and the pods on them, takes pending pods that name it
//! from a [`queue::SchedulingQueue`], picks a node with pure [`filters`] and [`scores`]
//! ([`schedule::find_node`]), counts the pod on that node at once ("assumes" it) and binds it
//! in the background ([`binder`]), several binds in flight. [`events`] reports the outcome.
//!
//! # Layout
//!
//! - `resources.rs`: quantities and pod requests; `affinity.rs`: node selector terms.
//! - `cache.rs`: nodes + bound/assumed pods; `queue.rs`: pending pods with backoff.
//! - `filters.rs`, `scores.rs`: the plugins; `schedule.rs`: one decision and its FitError.
//! - `binder.rs`: the `pods/binding` call; `events.rs`: Events and the PodScheduled condition.
//! - this file: the loop that ties watch events, decisions and bind results together.

pub mod affinity;
pub mod algorithm_bench;
pub mod binder;
pub mod cache;
pub mod error;
pub mod events;
pub mod filters;
pub mod inter_pod;
pub mod queue;
pub mod resources;
pub mod schedule;
pub mod scores;

pub use error::SchedulerError;

use cache::{pod_key, Cache, PodKey};
use events::{PodEvent, Recorder};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use queue::SchedulingQueue;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` is this are ours.
    pub scheduler_name: String,
    /// Binds in flight at once (decisions never wait for a bind unless this many are pending).
    pub max_binds_in_flight: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            max_binds_in_flight: 16,
        }
    }
}

/// A finished bind, reported back to the loop.
struct BindOutcome {
    key: PodKey,
    result: Result<(), SchedulerError>,
}

/// Whether `pod` waits for this scheduler: unbound, ours, not terminating or finished.
pub fn is_pending_for(pod: &Pod, scheduler_name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let unbound = spec.node_name.as_deref().unwrap_or_default().is_empty();
    let ours = spec
        .scheduler_name
        .as_deref()
        .unwrap_or(DEFAULT_SCHEDULER_NAME)
        == scheduler_name;
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    unbound && ours && pod.metadata.deletion_timestamp.is_none() && !finished
}

/// The scheduler's state, owned by its loop.
struct Scheduler {
    client: Client,
    config: SchedulerConfig,
    cache: Cache,
    /// Where the next decision's node search starts.
    cursor: schedule::NodeCursor,
    queue: SchedulingQueue,
    recorder: Recorder,
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<BindOutcome>,
    /// Names/keys seen since the watch (re)started listing; `None` outside a relist.
    node_relist: Option<HashSet<String>>,
    pod_relist: Option<HashSet<PodKey>>,
    nodes_synced: bool,
    pods_synced: bool,
}

/// Runs the scheduler until `shutdown` is cancelled (or a watch stream ends).
pub async fn run(
    client: Client,
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let nodes = watcher(Api::<Node>::all(client.clone()));
    let pods = watcher(Api::<Pod>::all(client.clone()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut s = Scheduler {
        recorder: Recorder::start(client.clone(), config.scheduler_name.clone()),
        client,
        config,
        cache: Cache::default(),
        cursor: schedule::NodeCursor::default(),
        queue: SchedulingQueue::default(),
        in_flight: 0,
        done_tx,
        node_relist: None,
        pod_relist: None,
        nodes_synced: false,
        pods_synced: false,
    };
    tracing::info!(name = %s.config.scheduler_name, "scheduler starting");
    futures::pin_mut!(nodes, pods);
    loop {
        let due = s.queue.next_due();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = nodes.next() => match ev {
                Some(Ok(ev)) => s.on_node(ev),
                Some(Err(e)) => tracing::warn!(error = %e, "node watch failed; retrying"),
                None => return Err(SchedulerError::WatchEnded { kind: "nodes" }),
            },
            ev = pods.next() => match ev {
                Some(Ok(ev)) => s.on_pod(ev),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => return Err(SchedulerError::WatchEnded { kind: "pods" }),
            },
            Some(outcome) = done_rx.recv() => s.on_bound(outcome),
            _ = sleep_until(due) => {}
        }
        if s.nodes_synced && s.pods_synced {
            s.schedule_ready();
        }
    }
}

/// A watch stream of `api` that retries with backoff.
fn watcher<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

impl Scheduler {
    fn on_node(&mut self, ev: Event<Node>) {
        match ev {
            Event::Init => self.node_relist = Some(HashSet::new()),
            Event::InitApply(node) | Event::Apply(node) => {
                if let Some(seen) = self.node_relist.as_mut() {
                    seen.insert(node.metadata.name.clone().unwrap_or_default());
                }
                if self.cache.upsert_node(node) {
                    self.queue.cluster_changed(Instant::now());
                }
            }
            Event::Delete(node) => {
                self.cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
            }
            Event::InitDone => {
                if let Some(seen) = self.node_relist.take() {
                    let gone: Vec<String> = self
                        .cache
                        .node_names()
                        .filter(|n| !seen.contains(*n))
                        .map(str::to_string)
                        .collect();
                    for name in gone {
                        self.cache.remove_node(&name);
                    }
                }
                self.nodes_synced = true;
                self.queue.cluster_changed(Instant::now());
            }
        }
    }

    fn on_pod(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.pod_relist = Some(HashSet::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let Some(seen) = self.pod_relist.as_mut() {
                    seen.insert(pod_key(&pod));
                }
                self.apply_pod(pod);
            }
            Event::Delete(pod) => self.delete_pod(&pod_key(&pod)),
            Event::InitDone => {
                if let Some(seen) = self.pod_relist.take() {
                    let gone: Vec<PodKey> = self
                        .cache
                        .pod_keys()
                        .chain(self.queue.keys())
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.delete_pod(&key);
                    }
                }
                self.pods_synced = true;
            }
        }
    }

    fn apply_pod(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        let now = Instant::now();
        if is_pending_for(&pod, &self.config.scheduler_name) {
            // Assumed pods are decided; this is the watch catching up with the binding.
            if !self.cache.is_assumed(&key) {
                self.queue.add_or_update(pod, now);
            }
            return;
        }
        self.queue.remove(&key);
        let had = self.cache.has_pod(&key);
        self.cache.upsert_pod(&pod);
        if had && !self.cache.has_pod(&key) {
            // A pod finished or started terminating away: its node has room again.
            self.queue.cluster_changed(now);
        }
    }

    fn delete_pod(&mut self, key: &PodKey) {
        self.queue.remove(key);
        if self.cache.has_pod(key) {
            self.cache.remove_pod(key);
            self.queue.cluster_changed(Instant::now());
        }
    }

    /// Decides for every ready pod while bind slots are free.
    fn schedule_ready(&mut self) {
        let mut rng = rand::rng();
        while self.in_flight < self.config.max_binds_in_flight {
            let Some(pod) = self.queue.pop(Instant::now()) else {
                break;
            };
            let key = pod_key(&pod);
            match schedule::find_node(&pod, &self.cache, &mut self.cursor, &mut rng) {
                Ok(node) => {
                    tracing::debug!(pod = %key, %node, "assumed");
                    self.cache.assume(&pod, &node);
                    self.spawn_bind(key, pod, node);
                }
                Err(fit) => {
                    let message = fit.to_string();
                    tracing::info!(pod = %key, %message, "unschedulable");
                    self.queue.unschedulable(&key, Instant::now());
                    self.report_unschedulable(&pod, message);
                }
            }
        }
    }

    fn spawn_bind(&mut self, key: PodKey, pod: Arc<Pod>, node: String) {
        self.in_flight += 1;
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let result = binder::bind(&client, ns, name, pod.metadata.uid.as_deref(), &node).await;
            if result.is_ok() {
                recorder.record(PodEvent::scheduled(&pod, &node));
            }
            // The loop only ends with the receiver; a closed channel means shutdown.
            let _ = done.send(BindOutcome { key, result });
        });
    }

    fn on_bound(&mut self, outcome: BindOutcome) {
        self.in_flight -= 1;
        match outcome.result {
            Ok(()) => self.queue.done(&outcome.key),
            Err(e) => {
                tracing::warn!(error = %e, "bind failed; retrying after backoff");
                self.cache.forget(&outcome.key);
                self.queue.retry_after_backoff(&outcome.key, Instant::now());
            }
        }
    }

    fn report_unschedulable(&self, pod: &Arc<Pod>, message: String) {
        if events::has_unschedulable_condition(pod, &message) {
            return;
        }
        self.recorder.record(PodEvent::failed(pod, message.clone()));
        let client = self.client.clone();
        let pod = Arc::clone(pod);
        tokio::spawn(async move {
            if let Err(e) = events::set_unschedulable(&client, &pod, &message).await {
                tracing::warn!(error = %e, "condition not set");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": []}});
        if let Some(spec) = extra.get("spec") {
            for (k, val) in spec.as_object().unwrap() {
                v["spec"][k] = val.clone();
            }
        }
        if let Some(meta) = extra.get("metadata") {
            for (k, val) in meta.as_object().unwrap() {
                v["metadata"][k] = val.clone();
            }
        }
        if let Some(status) = extra.get("status") {
            v["status"] = status.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_unbound_live_pods_of_ours_are_pending() {
        let ours = DEFAULT_SCHEDULER_NAME;
        assert!(is_pending_for(&pod(json!({})), ours));
        assert!(!is_pending_for(
            &pod(json!({"spec": {"nodeName": "n1"}})),
            ours
        ));
        assert!(!is_pending_for(
            &pod(json!({"spec": {"schedulerName": "other"}})),
            ours
        ));
        assert!(is_pending_for(
            &pod(json!({"spec": {"schedulerName": "other"}})),
            "other"
        ));
        assert!(!is_pending_for(
            &pod(json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})),
            ours
        ));
        assert!(!is_pending_for(
            &pod(json!({"status": {"phase": "Failed"}})),
            ours
        ));
    }
}
