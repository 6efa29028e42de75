//! core/v1 Events about pods, as the kubelet writes them (`source.component` and
//! `reportingComponent` `kubelet`), so `kubectl describe pod` shows what happened.
//!
//! Posting an event is best effort: a failure is logged, never fails the sync. Events go
//! through a bounded queue to one background writer (in order), so a pod's start never waits
//! for an event write (they cost two apiserver round trips per started container otherwise);
//! if the writer falls behind by [`EVENT_BUFFER`] events, new ones are dropped and logged,
//! like the kubelet's event broadcaster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::status::now;

/// Events queued for the writer before new ones are dropped.
pub const EVENT_BUFFER: usize = 4096;

/// The component name events are reported as.
pub const COMPONENT: &str = "kubelet";

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// Writes events for pods on one node.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Event>,
    node: String,
    seq: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder reporting as the kubelet of `node`; starts its writer task, which ends once
    /// every clone of the recorder is dropped and the queue is written. Needs a Tokio runtime.
    pub fn new(client: Client, node: &str) -> Self {
        let (queue, rx) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(write_events(client, rx));
        Self {
            queue,
            node: node.into(),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues an event about `pod` (about its container `container`, if given).
    pub fn emit(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let m = &pod.metadata;
        let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
        let name = m.name.clone().unwrap_or_default();
        let now = now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            metadata: ObjectMeta {
                // Unique like the kubelet's `<pod>.<hex time>`; the sequence number keeps two
                // events in the same nanosecond apart.
                name: Some(format!(
                    "{name}.{:x}{seq:x}",
                    Timestamp::now().as_nanosecond()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone(),
                field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some(reason.into()),
            count: Some(1),
            ..Default::default()
        };
        if let Err(e) = self.queue.try_send(event) {
            tracing::warn!(pod = %name, reason, "dropping event: {e}");
        }
    }
}

/// Posts the queued events one at a time until every sender is gone.
async fn write_events(client: Client, mut rx: mpsc::Receiver<Event>) {
    while let Some(event) = rx.recv().await {
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let pod = event.involved_object.name.clone().unwrap_or_default();
        let reason = event.reason.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => tracing::debug!(pod = %format!("{ns}/{pod}"), reason, "event posted"),
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{pod}"), reason, "posting event failed: {e}")
            }
        }
    }
}
