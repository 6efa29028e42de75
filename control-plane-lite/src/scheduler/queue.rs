//! The scheduling queue: pods waiting for a node. New pods are active at once; a pod that did
//! not fit backs off (1 s doubling to 10 s) and then waits in the unschedulable set until the
//! cluster changes (a node appears or changes, a pod goes away) or a minute passes.

use super::cache::{pod_key, PodKey};
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// First backoff after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without cluster changes.
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

/// Where a queued pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the active FIFO.
    Active,
    /// Being scheduled or bound; not handed out again.
    InFlight,
    /// Waiting for a cluster change; may not retry before `backoff_until`.
    Unschedulable { since: Instant },
    /// Will become active at the deadline (in `backoff`).
    Backoff,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    attempts: u32,
    backoff_until: Instant,
    state: State,
}

/// The queue; owned by the scheduling loop.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    entries: HashMap<PodKey, Entry>,
    active: VecDeque<PodKey>,
    backoff: BTreeSet<(Instant, PodKey)>,
    /// Unschedulable pods by when they became so (for the periodic flush without scans).
    unschedulable: BTreeSet<(Instant, PodKey)>,
}

/// Backoff after `attempts` failed attempts.
pub fn backoff_for(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// Adds a pending pod or refreshes the stored object. An update to an unschedulable pod may
    /// make it fit (say, a new toleration), so it is retried once its backoff ends.
    pub fn add_or_update(&mut self, pod: Pod, now: Instant) {
        let key = pod_key(&pod);
        let pod = Arc::new(pod);
        match self.entries.get_mut(&key) {
            Some(e) => {
                e.pod = pod;
                if matches!(e.state, State::Unschedulable { .. }) {
                    self.requeue(&key, now);
                }
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        attempts: 0,
                        backoff_until: now,
                        state: State::Active,
                    },
                );
                self.active.push_back(key);
            }
        }
    }

    /// Drops a pod (deleted, bound, or no longer ours).
    pub fn remove(&mut self, key: &PodKey) {
        if let Some(e) = self.entries.remove(key) {
            match e.state {
                State::Backoff => {
                    self.backoff.remove(&(e.backoff_until, key.clone()));
                }
                State::Unschedulable { since } => {
                    self.unschedulable.remove(&(since, key.clone()));
                }
                State::Active | State::InFlight => {}
            }
            // A key left in `active` is skipped by `pop` once its entry is gone.
        }
    }

    /// Keys of every queued pod.
    pub fn keys(&self) -> impl Iterator<Item = &PodKey> {
        self.entries.keys()
    }

    /// Whether the pod is queued in any state.
    pub fn contains(&self, key: &PodKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Moves pods whose backoff ended (or unschedulable past the flush interval) to active and
    /// hands out the next active pod, marking it in flight.
    pub fn pop(&mut self, now: Instant) -> Option<Arc<Pod>> {
        self.flush(now);
        while let Some(key) = self.active.pop_front() {
            if let Some(e) = self.entries.get_mut(&key) {
                if e.state == State::Active {
                    e.state = State::InFlight;
                    return Some(Arc::clone(&e.pod));
                }
            }
        }
        None
    }

    /// The pod was bound: forget it.
    pub fn done(&mut self, key: &PodKey) {
        self.remove(key);
    }

    /// The pod fit nowhere (or its bind failed): count the attempt and park it until the
    /// cluster changes, not retrying before its backoff ends.
    pub fn unschedulable(&mut self, key: &PodKey, now: Instant) {
        self.park(key, now);
    }

    fn park(&mut self, key: &PodKey, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            if let State::Unschedulable { since } = e.state {
                self.unschedulable.remove(&(since, key.clone()));
            }
            e.attempts += 1;
            e.backoff_until = now + backoff_for(e.attempts);
            e.state = State::Unschedulable { since: now };
            self.unschedulable.insert((now, key.clone()));
        }
    }

    /// Retry after a transient error (bind failed): back off, then active without waiting for
    /// a cluster change.
    pub fn retry_after_backoff(&mut self, key: &PodKey, now: Instant) {
        self.park(key, now);
        self.requeue(key, now);
    }

    /// Something changed that may let unschedulable pods fit: retry them (after backoff).
    pub fn cluster_changed(&mut self, now: Instant) {
        for (_, key) in std::mem::take(&mut self.unschedulable) {
            self.requeue(&key, now);
        }
    }

    /// When the next backed-off or unschedulable pod becomes due without outside events.
    pub fn next_due(&self) -> Option<Instant> {
        let backoff = self.backoff.first().map(|(t, _)| *t);
        let flush = self
            .unschedulable
            .first()
            .map(|(since, _)| *since + UNSCHEDULABLE_FLUSH);
        backoff.into_iter().chain(flush).min()
    }

    /// Unschedulable → backoff (or active if its backoff already ended).
    fn requeue(&mut self, key: &PodKey, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if let State::Unschedulable { since } = e.state {
            self.unschedulable.remove(&(since, key.clone()));
        }
        if e.backoff_until <= now {
            e.state = State::Active;
            self.active.push_back(key.clone());
        } else {
            e.state = State::Backoff;
            self.backoff.insert((e.backoff_until, key.clone()));
        }
    }

    fn flush(&mut self, now: Instant) {
        while let Some((t, key)) = self.backoff.first().cloned() {
            if t > now {
                break;
            }
            self.backoff.pop_first();
            if let Some(e) = self.entries.get_mut(&key) {
                if e.state == State::Backoff {
                    e.state = State::Active;
                    self.active.push_back(key);
                }
            }
        }
        while let Some((since, key)) = self.unschedulable.first().cloned() {
            if since + UNSCHEDULABLE_FLUSH > now {
                break;
            }
            self.unschedulable.pop_first();
            self.requeue(&key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}})).unwrap()
    }

    fn key(name: &str) -> PodKey {
        format!("ns/{name}")
    }

    #[test]
    fn backoff_doubles_from_one_to_ten_seconds() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff_for(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn fifo_and_no_double_handout() {
        let now = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(pod("a"), now);
        q.add_or_update(pod("b"), now);
        q.add_or_update(pod("a"), now); // update, not a second entry
        assert_eq!(q.pop(now).unwrap().metadata.name.as_deref(), Some("a"));
        assert_eq!(q.pop(now).unwrap().metadata.name.as_deref(), Some("b"));
        assert!(q.pop(now).is_none());
        q.done(&key("a"));
        assert!(!q.contains(&key("a")));
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_and_their_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(pod("a"), t0);
        q.pop(t0).unwrap();
        q.unschedulable(&key("a"), t0);
        // No change: not retried, even after the backoff.
        assert!(q.pop(t0 + Duration::from_secs(5)).is_none());
        // A change before the backoff ends: retried only once it ends.
        q.cluster_changed(t0 + Duration::from_millis(500));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(1)));
        assert!(q.pop(t0 + Duration::from_millis(900)).is_none());
        assert!(q.pop(t0 + Duration::from_secs(1)).is_some());
        // Second failure: 2 s backoff; a change after it retries immediately.
        let t1 = t0 + Duration::from_secs(1);
        q.unschedulable(&key("a"), t1);
        q.cluster_changed(t1 + Duration::from_secs(3));
        assert!(q.pop(t1 + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn unschedulable_pods_are_flushed_after_a_minute() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(pod("a"), t0);
        q.pop(t0).unwrap();
        q.unschedulable(&key("a"), t0);
        assert_eq!(q.next_due(), Some(t0 + UNSCHEDULABLE_FLUSH));
        assert!(q.pop(t0 + UNSCHEDULABLE_FLUSH).is_some());
    }

    #[test]
    fn removing_parked_pods_leaves_no_timers() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        for name in ["a", "b"] {
            q.add_or_update(pod(name), t0);
            q.pop(t0).unwrap();
            q.unschedulable(&key(name), t0);
        }
        q.remove(&key("a"));
        q.cluster_changed(t0 + Duration::from_secs(2));
        q.remove(&key("b"));
        assert_eq!(q.next_due(), None);
        assert!(q.pop(t0 + UNSCHEDULABLE_FLUSH).is_none());
    }

    #[test]
    fn removed_and_retried_pods() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(pod("a"), t0);
        q.remove(&key("a"));
        assert!(q.pop(t0).is_none());
        q.add_or_update(pod("b"), t0);
        q.pop(t0).unwrap();
        q.retry_after_backoff(&key("b"), t0);
        assert!(q.pop(t0).is_none());
        assert!(q.pop(t0 + INITIAL_BACKOFF).is_some());
        // An updated unschedulable pod is retried after its backoff without a cluster change.
        q.unschedulable(&key("b"), t0);
        q.add_or_update(pod("b"), t0 + Duration::from_secs(3));
        assert!(q.pop(t0 + Duration::from_secs(3)).is_some());
    }
}
