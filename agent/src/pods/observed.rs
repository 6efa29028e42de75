//! What the runtime says about one pod's containers: every instance (one per restart) of
//! every container name, newest first.
//!
//! One `ListContainers` per pod and sync gives ids and states; the full `ContainerStatus`
//! (exit code, timestamps, image) is fetched only for instances whose state changed since the
//! last sync, because an instance's status does not change while its state stays the same.

use std::collections::HashMap;

use super::labels::CONTAINER_NAME;
use crate::cri::{api, CriClient, CriError};

/// One container instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Runtime id.
    pub id: String,
    /// Container name in the pod spec.
    pub name: String,
    /// The attempt it was created as: the container's restart count.
    pub attempt: u32,
    /// Runtime state.
    pub state: api::ContainerState,
    /// Start time, nanoseconds since the epoch (0: not started).
    pub started_at: i64,
    /// Finish time, nanoseconds since the epoch (0: not finished).
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// The runtime's reason for the exit (e.g. `OOMKilled`), possibly empty.
    pub reason: String,
    /// The runtime's message, possibly empty.
    pub message: String,
    /// The image digest reference it runs.
    pub image_ref: String,
}

impl Instance {
    /// From a CRI `ContainerStatus`.
    pub fn from_status(s: &api::ContainerStatus) -> Self {
        let meta = s.metadata.clone().unwrap_or_default();
        let name = s.labels.get(CONTAINER_NAME).cloned().unwrap_or(meta.name);
        Self {
            id: s.id.clone(),
            name,
            attempt: meta.attempt,
            state: s.state(),
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            reason: s.reason.clone(),
            message: s.message.clone(),
            image_ref: s.image_ref.clone(),
        }
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.state == api::ContainerState::ContainerRunning
    }

    /// Whether it has exited.
    pub fn exited(&self) -> bool {
        self.state == api::ContainerState::ContainerExited
    }
}

/// The containers of one pod sandbox.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    by_name: HashMap<String, Vec<Instance>>,
}

impl Observed {
    /// Groups `instances` by container name, newest attempt first.
    pub fn new(instances: impl IntoIterator<Item = Instance>) -> Self {
        let mut by_name: HashMap<String, Vec<Instance>> = HashMap::new();
        for i in instances {
            by_name.entry(i.name.clone()).or_default().push(i);
        }
        for v in by_name.values_mut() {
            v.sort_by(|a, b| {
                b.attempt
                    .cmp(&a.attempt)
                    .then(b.started_at.cmp(&a.started_at))
            });
        }
        Self { by_name }
    }

    /// The newest instance of container `name`.
    pub fn latest(&self, name: &str) -> Option<&Instance> {
        self.by_name.get(name).and_then(|v| v.first())
    }

    /// The instance before the newest one.
    pub fn previous(&self, name: &str) -> Option<&Instance> {
        self.by_name.get(name).and_then(|v| v.get(1))
    }

    /// Every instance, for teardown and pruning.
    pub fn all(&self) -> impl Iterator<Item = &Instance> {
        self.by_name.values().flatten()
    }
}

/// Cached statuses of container instances, keyed by id.
#[derive(Debug, Default)]
pub struct StatusCache {
    by_id: HashMap<String, Instance>,
}

impl StatusCache {
    /// Lists the containers of sandbox `sandbox_id` and refreshes the status of those whose
    /// state changed.
    pub async fn observe(
        &mut self,
        cri: &CriClient,
        sandbox_id: &str,
    ) -> Result<Observed, CriError> {
        let listed = cri
            .list_containers(Some(api::ContainerFilter {
                pod_sandbox_id: sandbox_id.into(),
                ..Default::default()
            }))
            .await?;
        self.observe_listed(cri, &listed).await
    }

    /// Like [`Self::observe`], with the sandbox's containers already listed (by the poller).
    pub async fn observe_listed(
        &mut self,
        cri: &CriClient,
        listed: &[api::Container],
    ) -> Result<Observed, CriError> {
        let mut out = Vec::with_capacity(listed.len());
        for c in listed {
            let fresh = self
                .by_id
                .get(&c.id)
                .filter(|i| i.state as i32 == c.state)
                .cloned();
            let inst = match fresh {
                Some(i) => i,
                None => match cri.container_status(&c.id).await {
                    Ok(s) => Instance::from_status(&s),
                    // Removed between the listing and now: leave it out.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                },
            };
            self.by_id.insert(c.id.clone(), inst.clone());
            out.push(inst);
        }
        self.by_id
            .retain(|id, _| listed.iter().any(|c| &c.id == id));
        Ok(Observed::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str, attempt: u32) -> Instance {
        Instance {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            attempt,
            state: api::ContainerState::ContainerExited,
            started_at: 0,
            finished_at: 0,
            exit_code: 1,
            reason: String::new(),
            message: String::new(),
            image_ref: String::new(),
        }
    }

    #[test]
    fn newest_attempt_first() {
        let o = Observed::new([inst("a", 0), inst("a", 2), inst("a", 1), inst("b", 0)]);
        assert_eq!(o.latest("a").unwrap().attempt, 2);
        assert_eq!(o.previous("a").unwrap().attempt, 1);
        assert_eq!(o.latest("b").unwrap().attempt, 0);
        assert!(o.previous("b").is_none());
        assert!(o.latest("c").is_none());
        assert_eq!(o.all().count(), 4);
    }
}
