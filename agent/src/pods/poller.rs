//! One runtime poll per resync interval for the whole node: every sandbox this agent manages
//! and every container, grouped by pod uid and sandbox id, published to all pod workers.
//!
//! This keeps the steady-state cost at two CRI list calls per interval however many pods run,
//! instead of two per pod. A worker uses a snapshot only if the poll started after its own last
//! change to the runtime; right after it created or removed something it lists for itself, so
//! it never acts on a view that predates its own action (e.g. creating a second sandbox).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::labels::{managed_selector, POD_UID};
use crate::cri::{api, CriClient, CriError};

/// The runtime's state at one poll.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// When the poll started (`None`: no poll has succeeded yet).
    pub started: Option<Instant>,
    /// Managed sandboxes by pod uid.
    pub sandboxes: HashMap<String, Vec<api::PodSandbox>>,
    /// Containers by sandbox id.
    pub containers: HashMap<String, Vec<api::Container>>,
}

impl Snapshot {
    /// Lists everything once.
    pub async fn take(cri: &CriClient) -> Result<Self, CriError> {
        let started = Instant::now();
        let sandboxes = cri
            .list_pod_sandbox(Some(api::PodSandboxFilter {
                label_selector: managed_selector(),
                ..Default::default()
            }))
            .await?;
        let containers = cri.list_containers(None).await?;
        let mut out = Self {
            started: Some(started),
            ..Default::default()
        };
        for s in sandboxes {
            let uid = s.labels.get(POD_UID).cloned().unwrap_or_default();
            out.sandboxes.entry(uid).or_default().push(s);
        }
        for c in containers {
            out.containers
                .entry(c.pod_sandbox_id.clone())
                .or_default()
                .push(c);
        }
        Ok(out)
    }

    /// Whether this snapshot was taken after `change` (and so shows its effects).
    pub fn newer_than(&self, change: Option<Instant>) -> bool {
        match (self.started, change) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(s), Some(c)) => s > c,
        }
    }
}

/// Polls every `interval` until `cancel`, publishing each snapshot on `tx`.
pub async fn run_poller(
    cri: CriClient,
    interval: Duration,
    tx: watch::Sender<Arc<Snapshot>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match Snapshot::take(&cri).await {
            Ok(s) => {
                if failing {
                    tracing::info!("polling the runtime works again");
                }
                failing = false;
                tx.send_replace(Arc::new(s));
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("polling the runtime: {e}");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_polls_started_after_a_change_count() {
        let before = Instant::now();
        let change = before + Duration::from_millis(5);
        let snap = |started| Snapshot {
            started,
            ..Default::default()
        };
        assert!(!snap(None).newer_than(None));
        assert!(snap(Some(before)).newer_than(None));
        assert!(!snap(Some(before)).newer_than(Some(change)));
        assert!(snap(Some(change + Duration::from_millis(1))).newer_than(Some(change)));
    }
}
