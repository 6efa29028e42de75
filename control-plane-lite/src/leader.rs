//! Leader election over a coordination.k8s.io/v1 Lease, like client-go's: whoever holds the
//! Lease (and keeps renewing it) leads; others take it over once it has not changed for the
//! lease duration *as they observe it* (local clocks only, no cross-node clock comparison).
//! Writes are optimistic (the read `resourceVersion` must still be current), so two
//! candidates never both win a round. [`LeaderElector::run`] runs a task only while leading
//! and cancels it when a renewal has not succeeded within the renew deadline.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use rand::Rng;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Errors of the elector.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading, creating or updating the Lease failed for another reason than a lost race.
    #[error("{op} lease {namespace}/{name}: {source}")]
    Api {
        /// `get`, `create` or `update`.
        op: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Timings and identity of one candidate.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease (one per elected component).
    pub name: String,
    /// This candidate's `holderIdentity`.
    pub identity: String,
    /// How long a lease stays valid without renewal (non-leaders wait this long).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// Time between attempts.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Upstream's defaults (15 s / 10 s / 2 s) for Lease `namespace/name`, identity
    /// `hostname_pid_random`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `hostname_pid_random`: unique per process even for two candidates on one host.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random: u32 = rand::rng().random();
    format!("{host}_{}_{random:08x}", std::process::id())
}

/// What to do with the Lease we just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a new renewTime.
    Renew,
    /// Free or expired: take it, counting one more transition.
    Acquire,
    /// Someone else holds a live lease.
    Wait,
}

/// Decides from the current holder (empty: released) and whether the lease has gone
/// unrenewed for its duration as we observed it.
pub fn decide(spec: &LeaseSpec, identity: &str, expired: bool) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        Decision::Renew
    } else if holder.is_empty() || expired {
        Decision::Acquire
    } else {
        Decision::Wait
    }
}

/// When we last saw the Lease record change: expiry is measured on our clock from then.
#[derive(Debug, Default)]
pub struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    at: Option<Instant>,
}

impl Observed {
    /// Notes the record read at `now`; the clock restarts only if holder or renewTime changed.
    pub fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.at = Some(now);
        }
    }

    /// Whether the record has stayed unchanged for `duration` up to `now`.
    pub fn expired(&self, now: Instant, duration: Duration) -> bool {
        self.at.is_some_and(|at| at + duration <= now)
    }
}

/// Why [`LeaderElector::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Renewals failed past the renew deadline; the task was cancelled.
    LostLeadership,
    /// The shutdown token fired; the task was cancelled and the lease released.
    Shutdown,
    /// The task returned by itself; the lease was released.
    TaskFinished,
}

/// One candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    observed: Observed,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// A candidate for the Lease in `config`.
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Observed::default(),
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn err(&self, op: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            op,
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn our_spec(&self, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(now_micro()),
            renew_time: Some(now_micro()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: creates, renews or takes over the Lease. `Ok(true)` if we lead after it;
    /// a lost write race is `Ok(false)`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let name = self.config.name.clone();
        let Some(mut lease) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err("get", e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.our_spec(0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err("create", e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        self.observed.observe(&spec, now);
        // The holder's own lease duration governs its expiry.
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.config.lease_duration);
        let new_spec = match decide(
            &spec,
            &self.config.identity,
            self.observed.expired(now, duration),
        ) {
            Decision::Wait => return Ok(false),
            Decision::Renew => LeaseSpec {
                renew_time: Some(now_micro()),
                lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
                ..spec
            },
            Decision::Acquire => self.our_spec(spec.lease_transitions.unwrap_or(0) + 1),
        };
        lease.spec = Some(new_spec);
        // `lease.metadata.resourceVersion` is the one we read: a concurrent writer makes this 409.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                if let Some(spec) = &written.spec {
                    self.observed.observe(spec, Instant::now());
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err("update", e)),
        }
    }

    /// Gives the lease up (empty holder, 1 s duration) so a successor need not wait.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let name = self.config.name.clone();
        let Some(mut lease) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err("get", e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err("update", e)),
        }
    }

    /// Waits to lead, then runs `task(token)` while renewing; cancels `token` (and waits for the
    /// task) when leadership is lost or `shutdown` fires. Dropping the returned future drops the
    /// task too and simply stops renewing.
    pub async fn run<F, Fut>(&mut self, shutdown: CancellationToken, task: F) -> Outcome
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let retry = self.config.retry_period;
        // Acquire.
        loop {
            // A hung request must not stall the candidate forever.
            let renew_deadline = self.config.renew_deadline;
            match tokio::time::timeout(renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election attempt failed"),
                Err(_) => tracing::warn!("leader election attempt timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Shutdown,
                _ = tokio::time::sleep(jittered(retry)) => {}
            }
        }
        tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
        let token = shutdown.child_token();
        let task = task(token.clone());
        tokio::pin!(task);
        let mut last_renew = Instant::now();
        let outcome = loop {
            tokio::select! {
                // The task's token is a child of `shutdown`: check shutdown first so a task that
                // ends because of it is reported as a shutdown.
                biased;
                _ = shutdown.cancelled() => break Outcome::Shutdown,
                () = &mut task => break Outcome::TaskFinished,
                _ = tokio::time::sleep(retry) => {}
            }
            let deadline = last_renew + self.config.renew_deadline;
            let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => last_renew = Instant::now(),
                Ok(Ok(false)) => {
                    // Someone else holds it now: we are no longer leader.
                    break Outcome::LostLeadership;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                break Outcome::LostLeadership;
            }
        };
        token.cancel();
        if outcome != Outcome::TaskFinished {
            task.await;
        }
        if outcome == Outcome::LostLeadership {
            tracing::warn!(identity = %self.config.identity, "lost leadership");
        } else if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "releasing the lease failed");
        }
        outcome
    }
}

/// `d` plus up to 20 % so candidates do not retry in lockstep.
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(rand::rng().random_range(0.0..0.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&spec(Some("me")), "me", false), Decision::Renew);
        assert_eq!(decide(&spec(Some("me")), "me", true), Decision::Renew);
        assert_eq!(decide(&spec(Some("other")), "me", false), Decision::Wait);
        assert_eq!(decide(&spec(Some("other")), "me", true), Decision::Acquire);
        assert_eq!(decide(&spec(None), "me", false), Decision::Acquire);
        assert_eq!(decide(&spec(Some("")), "me", false), Decision::Acquire);
    }

    #[test]
    fn expiry_runs_from_the_last_observed_change() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut o = Observed::default();
        assert!(!o.expired(t0, d), "never observed is not expired");
        o.observe(&spec(Some("a")), t0);
        assert!(!o.expired(t0 + Duration::from_secs(14), d));
        // Same record seen again: the clock keeps running.
        o.observe(&spec(Some("a")), t0 + Duration::from_secs(10));
        assert!(o.expired(t0 + d, d));
        // A renewal (new renewTime) restarts it.
        let mut renewed = spec(Some("a"));
        renewed.renew_time = Some(now_micro());
        o.observe(&renewed, t0 + d);
        assert!(!o.expired(t0 + d + Duration::from_secs(14), d));
        assert!(o.expired(t0 + d + d, d));
    }

    #[test]
    fn identities_are_unique_per_call() {
        let a = default_identity();
        assert_ne!(a, default_identity());
        assert!(a.contains(&format!("_{}_", std::process::id())), "{a}");
    }
}
