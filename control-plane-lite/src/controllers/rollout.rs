//! The arithmetic of a Deployment rollout, kept pure so it is unit-tested without an
//! apiserver: maxSurge/maxUnavailable resolution, how far the new ReplicaSet may grow and how
//! far the old ones may shrink (upstream's `NewRSNewReplicas` and
//! `reconcileOldReplicaSets`), and the pod-template hash.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// maxSurge and maxUnavailable as pod counts for `replicas` (percentages: surge rounds up,
/// unavailable down; both zero would block a rollout, so unavailable becomes 1).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let quarter = IntOrString::String("25%".into());
    let scaled = |v: &IntOrString, round_up: bool| -> i32 {
        match v {
            IntOrString::Int(n) => *n,
            IntOrString::String(s) => {
                let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
                let total = pct * i64::from(replicas);
                (if round_up {
                    (total + 99) / 100
                } else {
                    total / 100
                }) as i32
            }
        }
    };
    let surge = scaled(max_surge.unwrap_or(&quarter), true).max(0);
    let mut unavailable = scaled(max_unavailable.unwrap_or(&quarter), false)
        .max(0)
        .min(replicas.max(0));
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// One ReplicaSet as the rollout sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsCounts {
    /// `spec.replicas`.
    pub spec: i32,
    /// Available pods, never more than `spec` (status may lag a scale-down).
    pub available: i32,
    /// Pods it has or will have, never less than `spec`: more while a scale-down has not yet
    /// removed them (`status.replicas`).
    pub pods: i32,
}

impl RsCounts {
    /// Counts with no scale-down in progress (`pods == spec`).
    pub fn settled(spec: i32, available: i32) -> Self {
        Self {
            spec,
            available,
            pods: spec,
        }
    }
}

/// The new ReplicaSet's next `spec.replicas` under RollingUpdate. The surge counts the pods
/// the ReplicaSets still have, not only their `spec`: an old set just scaled down keeps its
/// pods until its controller deletes them, and scaling up meanwhile would go past
/// `replicas + surge` for a moment.
pub fn new_rs_replicas(replicas: i32, surge: i32, new: RsCounts, all: &[RsCounts]) -> i32 {
    if new.spec >= replicas {
        return replicas;
    }
    let current: i32 = all.iter().map(|r| r.pods).sum();
    let max_total = replicas + surge;
    if current >= max_total {
        return new.spec;
    }
    new.spec + (max_total - current).min(replicas - new.spec)
}

/// The old ReplicaSets' next `spec.replicas` (same order as `old`) under RollingUpdate:
/// first shrink their unavailable pods, then available ones while at least
/// `replicas - max_unavailable` stay available.
pub fn old_rs_replicas(
    replicas: i32,
    max_unavailable: i32,
    new: RsCounts,
    old: &[RsCounts],
) -> Vec<i32> {
    let mut next: Vec<i32> = old.iter().map(|r| r.spec).collect();
    let all_pods: i32 = next.iter().sum::<i32>() + new.spec;
    let min_available = replicas - max_unavailable;
    let new_unavailable = new.spec - new.available;
    let mut budget = all_pods - min_available - new_unavailable;
    if budget <= 0 || next.iter().all(|&n| n == 0) {
        return next;
    }
    // Unavailable old pods are free to remove.
    for (i, r) in old.iter().enumerate() {
        let unhealthy = (next[i] - r.available).max(0).min(budget);
        next[i] -= unhealthy;
        budget -= unhealthy;
    }
    // Then available ones, down to minAvailable across everything.
    let available: i32 = old
        .iter()
        .zip(&next)
        .map(|(r, n)| r.available.min(*n))
        .sum::<i32>()
        + new.available;
    let mut excess = (available - min_available).max(0);
    for n in next.iter_mut() {
        let down = (*n).min(excess);
        *n -= down;
        excess -= down;
    }
    next
}

const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The template as JSON with empty objects, empty lists and nulls dropped (recursively), so
/// that `resources: {}` from a Go client and an absent field compare and hash the same.
pub fn normalized(template: &PodTemplateSpec) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !strip(x));
                m.is_empty()
            }
            serde_json::Value::Array(a) => {
                a.iter_mut().for_each(|x| {
                    strip(x);
                });
                a.is_empty()
            }
            serde_json::Value::Null => true,
            _ => false,
        }
    }
    let mut v = serde_json::to_value(template).unwrap_or_default();
    strip(&mut v);
    v
}

/// `pod-template-hash`: FNV-1a over the [`normalized`] template's JSON (maps sorted) and the
/// collision count, spelled in upstream's vowel-free alphabet; stable across restarts and
/// processes.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&normalized(template)).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(spec: i32, available: i32) -> RsCounts {
        RsCounts::settled(spec, available)
    }

    #[test]
    fn surge_waits_for_a_scaled_down_set_to_lose_its_pods() {
        // 4 replicas, surge 1: the old set was scaled 4 -> 2 but still has 4 pods.
        let old = RsCounts {
            pods: 4,
            ..rs(2, 2)
        };
        let new = rs(1, 1);
        assert_eq!(new_rs_replicas(4, 1, new, &[old, new]), 1);
        // Once its pods are gone, the new set may grow to fill the surge.
        assert_eq!(new_rs_replicas(4, 1, new, &[rs(2, 2), new]), 3);
    }

    #[test]
    fn fenceposts() {
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(resolve_fenceposts(None, None, 1), (1, 0));
        let zero = IntOrString::Int(0);
        assert_eq!(resolve_fenceposts(Some(&zero), Some(&zero), 3), (0, 1));
        let half = IntOrString::String("50%".into());
        assert_eq!(
            resolve_fenceposts(Some(&half), Some(&IntOrString::Int(2)), 5),
            (3, 2)
        );
    }

    #[test]
    fn rolling_update_never_leaves_bounds() {
        // Simulate: replicas 4, surge 1, unavailable 1; each step pods become available.
        let (replicas, surge, unavail) = (4, 1, 1);
        let mut new = rs(0, 0);
        let mut old = vec![rs(4, 4)];
        for _ in 0..20 {
            let mut all = old.clone();
            all.push(new);
            new.spec = new_rs_replicas(replicas, surge, new, &all);
            new.pods = new.spec;
            let next = old_rs_replicas(replicas, unavail, new, &old);
            for (o, n) in old.iter_mut().zip(next) {
                o.spec = n;
                o.available = o.available.min(n);
                // The ReplicaSet controller removes the pods before the next step.
                o.pods = n;
            }
            let total: i32 = old.iter().map(|r| r.spec).sum::<i32>() + new.spec;
            let available: i32 = old.iter().map(|r| r.available).sum::<i32>() + new.available;
            assert!(total <= replicas + surge, "total {total}");
            assert!(available >= replicas - unavail, "available {available}");
            new.available = new.spec; // the new pods turn ready
        }
        assert_eq!((new.spec, old[0].spec), (4, 0));
    }

    #[test]
    fn unavailable_old_pods_go_first() {
        // Old RS has 3 pods of which 1 is not available: it may drop to 2 right away.
        assert_eq!(old_rs_replicas(3, 0, rs(1, 1), &[rs(3, 2)]), vec![2]);
        assert_eq!(old_rs_replicas(3, 1, rs(0, 0), &[rs(0, 0)]), vec![0]);
    }

    #[test]
    fn template_hash_is_stable_and_sensitive() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"b": "2", "a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "x:1"}]}}))
        .unwrap();
        let h = pod_template_hash(&t, None);
        assert_eq!(h, pod_template_hash(&t.clone(), None));
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)) && !h.is_empty());
        let mut t2 = t.clone();
        t2.spec.as_mut().unwrap().containers[0].image = Some("x:2".into());
        assert_ne!(h, pod_template_hash(&t2, None));
        assert_ne!(h, pod_template_hash(&t, Some(1)));
        let mut t3 = t.clone();
        t3.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        assert_eq!(h, pod_template_hash(&t3, None), "empty resources == absent");
    }
}
