//! What the scheduler tells users: `Scheduled` / `FailedScheduling` Events and the pod's
//! `PodScheduled=False` condition. Events go through a bounded channel to a background
//! writer, so a burst of decisions never waits on event writes (dropped if it falls behind,
//! like upstream's broadcaster).

use super::error::SchedulerError;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;

/// Event writes queued before new ones are dropped.
const EVENT_BUFFER: usize = 4096;
/// Event writes in flight at once.
const EVENT_CONCURRENCY: usize = 8;

/// `Normal`/`Warning` and reason/message of one event about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: Option<String>,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// `Scheduled` or `FailedScheduling`.
    pub reason: &'static str,
    /// Human text.
    pub message: String,
}

impl PodEvent {
    /// `Scheduled`: "Successfully assigned NS/POD to NODE".
    pub fn scheduled(pod: &Pod, node: &str) -> Self {
        let (namespace, name, uid) = identity(pod);
        let message = format!("Successfully assigned {namespace}/{name} to {node}");
        Self {
            namespace,
            name,
            uid,
            type_: "Normal",
            reason: "Scheduled",
            message,
        }
    }

    /// `FailedScheduling` with the fit error's text.
    pub fn failed(pod: &Pod, message: String) -> Self {
        let (namespace, name, uid) = identity(pod);
        Self {
            namespace,
            name,
            uid,
            type_: "Warning",
            reason: "FailedScheduling",
            message,
        }
    }

    /// The core/v1 Event object for it, reported by `component`.
    pub fn to_event(&self, component: &str) -> Event {
        let now = Timestamp::now();
        let suffix: u64 = rand::rng().random();
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{suffix:016x}", self.name)),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(self.namespace.clone()),
                name: Some(self.name.clone()),
                uid: self.uid.clone(),
                ..Default::default()
            },
            type_: Some(self.type_.into()),
            reason: Some(self.reason.into()),
            message: Some(self.message.clone()),
            action: Some(
                if self.reason == "Scheduled" {
                    "Binding"
                } else {
                    "Scheduling"
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(component.into()),
                host: None,
            }),
            reporting_component: Some(component.into()),
            reporting_instance: Some(component.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        }
    }
}

fn identity(pod: &Pod) -> (String, String, Option<String>) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone(),
    )
}

/// Hands events to the background writer.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<PodEvent>,
}

impl Recorder {
    /// Starts the writer task for `client`, reporting as `component`; it ends when every
    /// Recorder clone is dropped.
    pub fn start(client: Client, component: String) -> Self {
        let (tx, rx) = mpsc::channel::<PodEvent>(EVENT_BUFFER);
        tokio::spawn(async move {
            tokio_stream_from(rx)
                .for_each_concurrent(EVENT_CONCURRENCY, |ev| {
                    let client = client.clone();
                    let component = component.clone();
                    async move {
                        if let Err(e) = write_event(&client, &ev, &component).await {
                            tracing::warn!(error = %e, "event not recorded");
                        }
                    }
                })
                .await;
        });
        Self { tx }
    }

    /// Queues an event; drops it (with a log line) if the writer is behind.
    pub fn record(&self, event: PodEvent) {
        if let Err(e) = self.tx.try_send(event) {
            tracing::debug!(error = %e, "event dropped");
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn write_event(
    client: &Client,
    ev: &PodEvent,
    component: &str,
) -> Result<(), SchedulerError> {
    let api: Api<Event> = Api::namespaced(client.clone(), &ev.namespace);
    api.create(&PostParams::default(), &ev.to_event(component))
        .await
        .map_err(|source| SchedulerError::Event {
            pod: format!("{}/{}", ev.namespace, ev.name),
            reason: ev.reason.to_string(),
            source,
        })?;
    Ok(())
}

/// The strategic-merge patch that sets `PodScheduled=False, reason Unschedulable` (conditions
/// merge by `type`, so the pod's other conditions stay). It carries the `resourceVersion` the
/// decision was made on as a precondition, so it never lands on a pod bound meanwhile.
pub fn unschedulable_condition_patch(
    message: &str,
    resource_version: Option<&str>,
) -> serde_json::Value {
    json!({"metadata": {"resourceVersion": resource_version}, "status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}})
}

/// Whether the pod already carries this exact PodScheduled=False condition (skip the write).
pub fn has_unschedulable_condition(pod: &Pod, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        })
}

/// Patches the pod's status subresource with the Unschedulable condition, unless the pod
/// changed since `pod` was read (then the watch brings the new version to decide again).
pub async fn set_unschedulable(
    client: &Client,
    pod: &Pod,
    message: &str,
) -> Result<(), SchedulerError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = unschedulable_condition_patch(message, pod.metadata.resource_version.as_deref());
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(source) => Err(SchedulerError::Condition {
            pod: format!("{namespace}/{name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "m"}]}}),
        )
        .unwrap()
    }

    #[test]
    fn scheduled_event_wording() {
        let ev = PodEvent::scheduled(&pod(), "n1");
        assert_eq!(ev.message, "Successfully assigned ns/web to n1");
        let obj = ev.to_event("default-scheduler");
        assert_eq!(obj.type_.as_deref(), Some("Normal"));
        assert_eq!(obj.reason.as_deref(), Some("Scheduled"));
        assert_eq!(obj.involved_object.uid.as_deref(), Some("u1"));
        assert!(obj.metadata.name.unwrap().starts_with("web."));
    }

    #[test]
    fn failed_event_and_condition() {
        let ev = PodEvent::failed(&pod(), "0/1 nodes are available: 1 Too many pods.".into());
        assert_eq!((ev.type_, ev.reason), ("Warning", "FailedScheduling"));
        let patch = unschedulable_condition_patch("x", Some("42"));
        assert_eq!(patch["status"]["conditions"][0]["reason"], "Unschedulable");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert!(has_unschedulable_condition(&pod(), "m"));
        assert!(!has_unschedulable_condition(&pod(), "other"));
    }
}
