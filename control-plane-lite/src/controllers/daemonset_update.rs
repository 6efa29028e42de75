//! The DaemonSet `RollingUpdate` decisions, kept pure for unit tests.
//!
//! With `maxSurge: 0` (the default): which old daemon pods to delete now so that at most
//! `maxUnavailable` nodes are without an available pod; the controller creates the
//! replacement once the old pod is gone, so a node's daemon never runs twice (host ports, host
//! network). With `maxSurge` above 0 ([`surge`]): the new pod starts beside the old one on up
//! to `maxSurge` nodes at a time, and the old one goes once the new one is available, so no
//! node is ever without an available daemon (the daemon must tolerate running twice).

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

/// `maxSurge` of the strategy for a set that wants `desired` pods: 0 unless `RollingUpdate` sets
/// it; percentages round up, as upstream.
pub fn max_surge(strategy: Option<&DaemonSetUpdateStrategy>, desired: i32) -> i32 {
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return 0;
    }
    match strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_surge.clone())
    {
        Some(IntOrString::Int(n)) => n.max(0),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * i64::from(desired) + 99) / 100).max(0) as i32
        }
        None => 0,
    }
}

/// One eligible node during a surge update: its oldest old pod and its newest updated pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SurgeSlot {
    /// The node.
    pub node: String,
    /// A live pod with an older template.
    pub old: Option<SlotPod>,
    /// A live pod with the current template.
    pub new: Option<SlotPod>,
}

/// What a surge update does now: nodes that get a new pod, old pods to delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SurgeSteps {
    /// Nodes to start a current pod on (beside their old one, or on an empty node).
    pub create: Vec<String>,
    /// Old pods whose node has an available new one, or that serve nothing.
    pub delete: Vec<String>,
}

/// The surge update: a node with an available new pod loses its old one; a node with only an
/// old pod gets a new one beside it while fewer than `max_surge` nodes are surging (at once
/// when its old pod is unavailable, as upstream); an empty node gets a new pod.
pub fn surge(slots: &[SurgeSlot], max_surge: i32) -> SurgeSteps {
    let mut steps = SurgeSteps::default();
    let mut surging = slots
        .iter()
        .filter(|s| s.old.is_some() && s.new.as_ref().is_some_and(|n| !n.available))
        .count() as i32;
    for slot in slots {
        match (&slot.old, &slot.new) {
            (None, None) => steps.create.push(slot.node.clone()),
            (Some(old), Some(new)) if new.available => steps.delete.push(old.name.clone()),
            (Some(old), None) if !old.available => steps.create.push(slot.node.clone()),
            (Some(_), None) if surging < max_surge => {
                surging += 1;
                steps.create.push(slot.node.clone());
            }
            _ => {}
        }
    }
    steps
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

    fn surge_slot(node: &str, old: Option<bool>, new: Option<bool>) -> SurgeSlot {
        let pod = |kind: &str, available: bool, updated: bool| SlotPod {
            name: format!("{node}-{kind}"),
            updated,
            available,
        };
        SurgeSlot {
            node: node.into(),
            old: old.map(|a| pod("old", a, false)),
            new: new.map(|a| pod("new", a, true)),
        }
    }

    #[test]
    fn surge_starts_new_pods_beside_old_ones_within_the_budget() {
        let all_old = [
            surge_slot("a", Some(true), None),
            surge_slot("b", Some(true), None),
            surge_slot("c", Some(true), None),
        ];
        assert_eq!(surge(&all_old, 1).create, ["a"]);
        assert_eq!(surge(&all_old, 2).create, ["a", "b"]);
        // a surging (new not available yet): nothing more with a budget of 1.
        let a_surging = [
            surge_slot("a", Some(true), Some(false)),
            surge_slot("b", Some(true), None),
            surge_slot("c", Some(false), None),
        ];
        let steps = surge(&a_surging, 1);
        assert_eq!(
            steps.create,
            ["c"],
            "an unavailable old pod is replaced at once"
        );
        assert!(steps.delete.is_empty());
        // a's new pod is available: its old one goes, and b may start.
        let a_done = [
            surge_slot("a", Some(true), Some(true)),
            surge_slot("b", Some(true), None),
            surge_slot("", None, None),
        ];
        let steps = surge(&a_done, 1);
        assert_eq!(steps.delete, ["a-old"]);
        assert_eq!(steps.create, ["b", ""]);
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
        assert_eq!(max_surge(Some(&on_delete), 10), 0);
        assert_eq!(max_surge(None, 10), 0);
        let surge = |v: IntOrString| DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(v),
            }),
        };
        assert_eq!(max_surge(Some(&surge(IntOrString::Int(2))), 10), 2);
        assert_eq!(
            max_surge(Some(&surge(IntOrString::String("15%".into()))), 10),
            2
        );
    }
}
