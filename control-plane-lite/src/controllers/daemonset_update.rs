//! The DaemonSet `RollingUpdate` decision, kept pure for unit tests: which old daemon pods to
//! delete now so that at most `maxUnavailable` nodes are without an available pod (upstream's
//! `rollingUpdate` with `maxSurge: 0`). The controller creates the replacement once the old pod
//! is gone, so a node's daemon never runs twice (host ports, host network).

use k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One eligible node as the update sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The node's live daemon pod, if any.
    pub pod: Option<SlotPod>,
}

/// A node's live daemon pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPod {
    /// Its name.
    pub name: String,
    /// Whether it runs the current template.
    pub updated: bool,
    /// Whether it is available (ready for `minReadySeconds`).
    pub available: bool,
}

/// How many nodes may be without an available daemon pod during an update of a set that wants
/// `desired` pods; `None` under `OnDelete` (old pods stay until deleted by hand). Percentages
/// round up and the result is at least 1, as upstream.
pub fn max_unavailable(strategy: Option<&DaemonSetUpdateStrategy>, desired: i32) -> Option<i32> {
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return None;
    }
    let value = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let n = match value {
        IntOrString::Int(n) => n,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * i64::from(desired) + 99) / 100) as i32
        }
    };
    Some(n.max(1))
}

/// The old pods to delete now: every unavailable old pod (it serves nothing anyway), then
/// available ones, in slot order, while fewer than `max_unavailable` nodes lack an available
/// pod (unavailable old pods included).
pub fn pods_to_delete(slots: &[Slot], max_unavailable: i32) -> Vec<String> {
    let mut unavailable = 0;
    let mut delete = Vec::new();
    let mut candidates = Vec::new();
    for slot in slots {
        match &slot.pod {
            None => unavailable += 1,
            Some(p) if p.updated => unavailable += i32::from(!p.available),
            Some(p) if !p.available => {
                // Its node counts as unavailable already (upstream does not count it, which
                // lets an update take more nodes down than maxUnavailable).
                unavailable += 1;
                delete.push(p.name.clone());
            }
            Some(p) => candidates.push(p.name.clone()),
        }
    }
    let room = (max_unavailable - unavailable).max(0) as usize;
    delete.extend(candidates.into_iter().take(room));
    delete
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::RollingUpdateDaemonSet;

    fn slot(name: &str, updated: bool, available: bool) -> Slot {
        Slot {
            pod: Some(SlotPod {
                name: name.into(),
                updated,
                available,
            }),
        }
    }

    #[test]
    fn one_node_at_a_time_by_default() {
        let slots = [
            slot("a", false, true),
            slot("b", false, true),
            slot("c", false, true),
        ];
        assert_eq!(pods_to_delete(&slots, 1), ["a"]);
        // a is being replaced: its node has no pod; nothing more goes until it is available.
        let slots = [
            Slot { pod: None },
            slot("b", false, true),
            slot("c", false, true),
        ];
        assert!(pods_to_delete(&slots, 1).is_empty());
        let slots = [
            slot("a2", true, false),
            slot("b", false, true),
            slot("c", false, true),
        ];
        assert!(pods_to_delete(&slots, 1).is_empty());
        let slots = [
            slot("a2", true, true),
            slot("b", false, true),
            slot("c", false, true),
        ];
        assert_eq!(pods_to_delete(&slots, 1), ["b"]);
    }

    #[test]
    fn unavailable_old_pods_go_at_once() {
        let slots = [
            slot("a", false, false),
            slot("b", false, false),
            slot("c", false, true),
        ];
        assert_eq!(pods_to_delete(&slots, 1), ["a", "b"]);
        assert_eq!(pods_to_delete(&slots, 3), ["a", "b", "c"]);
    }

    #[test]
    fn budget_follows_the_strategy() {
        let rolling = |v: IntOrString| DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(v),
                max_surge: None,
            }),
        };
        assert_eq!(max_unavailable(None, 10), Some(1));
        assert_eq!(
            max_unavailable(Some(&rolling(IntOrString::Int(3))), 10),
            Some(3)
        );
        assert_eq!(
            max_unavailable(Some(&rolling(IntOrString::String("25%".into()))), 10),
            Some(3)
        );
        assert_eq!(
            max_unavailable(Some(&rolling(IntOrString::String("0%".into()))), 10),
            Some(1)
        );
        let on_delete = DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        };
        assert_eq!(max_unavailable(Some(&on_delete), 10), None);
    }
}
