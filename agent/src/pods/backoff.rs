//! CrashLoopBackOff: how long an exited container waits before its next restart.
//!
//! The kubelet's rule: the first restart is immediate; each further one waits for the
//! current delay after the container finished, the delay starting at 10 s and doubling up to
//! 5 minutes. A container that has not needed a restart for twice the maximum (10 minutes,
//! i.e. it ran that long) starts over at the initial delay. Times are wall-clock, since the
//! container's finish time comes from the runtime.

use std::time::{Duration, SystemTime};

/// The delays of the back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the second exit.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// The back-off state of one container of one pod.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// The current delay and when it was last advanced.
    current: Option<(Duration, SystemTime)>,
}

impl Backoff {
    /// How much longer a container that finished at `finished` must wait at `now`; `None`
    /// when it may restart now.
    pub fn remaining(
        &self,
        policy: &BackoffPolicy,
        finished: SystemTime,
        now: SystemTime,
    ) -> Option<Duration> {
        let (delay, updated) = self.current?;
        if expired(policy, updated, now) {
            return None;
        }
        let ready_at = finished + delay;
        ready_at.duration_since(now).ok().filter(|d| !d.is_zero())
    }

    /// Records a restart at `now`, advancing the delay.
    pub fn restarted(&mut self, policy: &BackoffPolicy, now: SystemTime) {
        let delay = match self.current {
            Some((d, updated)) if !expired(policy, updated, now) => (d * 2).min(policy.max),
            _ => policy.initial,
        };
        self.current = Some((delay, now));
    }

    /// The delay the next restart waits for, for messages.
    pub fn delay(&self) -> Duration {
        self.current.map_or(Duration::ZERO, |(d, _)| d)
    }
}

/// Whether the back-off was last advanced more than twice the maximum ago.
fn expired(policy: &BackoffPolicy, updated: SystemTime, now: SystemTime) -> bool {
    now.duration_since(updated)
        .is_ok_and(|since| since > policy.max * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_doubling_then_capped_then_reset() {
        let p = BackoffPolicy::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        let mut b = Backoff::default();
        assert_eq!(b.remaining(&p, t0, t0), None, "first restart is immediate");
        b.restarted(&p, t0);
        // Crashed again right away: wait 10 s from the finish.
        assert_eq!(b.remaining(&p, t0 + s(1), t0 + s(1)), Some(s(10)));
        assert_eq!(b.remaining(&p, t0 + s(1), t0 + s(6)), Some(s(5)));
        assert_eq!(b.remaining(&p, t0 + s(1), t0 + s(11)), None);
        b.restarted(&p, t0 + s(11));
        assert_eq!(b.delay(), s(20));
        for i in 0..10 {
            b.restarted(&p, t0 + s(12 + i));
        }
        assert_eq!(b.delay(), s(300));
        // Ran for more than 10 minutes: back to the initial delay.
        let late = t0 + s(22 + 601);
        assert_eq!(b.remaining(&p, late, late), None);
        b.restarted(&p, late);
        assert_eq!(b.delay(), s(10));
    }
}
