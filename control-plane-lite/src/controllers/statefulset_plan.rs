//! The StatefulSet controller's decisions, kept pure so they are unit-tested without an
//! apiserver: pod ordinals from names, and the next creates and deletes for a set of pods under
//! a pod management policy and an update strategy (upstream's `updateStatefulSet` in
//! `stateful_set_control.go`, without ControllerRevisions).

use std::collections::BTreeMap;

/// One existing pod of the set, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Its `controller-revision-hash` label.
    pub revision: String,
    /// It has a deletionTimestamp.
    pub terminating: bool,
    /// Its phase is Failed (or Succeeded: a set's pods are meant to run forever).
    pub finished: bool,
    /// Running and Ready.
    pub healthy: bool,
}

/// How the set's pods are managed (`spec.podManagementPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One pod at a time: create `i+1` only when `0..=i` are Running and Ready, delete from the
    /// highest ordinal and wait for each to be gone.
    OrderedReady,
    /// Create and delete all at once.
    Parallel,
}

/// How template changes reach existing pods (`spec.updateStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Delete out-of-date pods from the highest ordinal down to `partition`, one at a time,
    /// each once the ones above it are healthy again; they come back at the new revision.
    RollingUpdate {
        /// Ordinals below this keep their revision.
        partition: usize,
    },
    /// Only pods the user deletes are recreated at the new revision.
    OnDelete,
}

/// One step the controller takes on a pod ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create `<set>-<ordinal>` at the update revision.
    Create(usize),
    /// Delete `<set>-<ordinal>` (gracefully; it is recreated once gone if still wanted).
    Delete(usize),
}

/// The ordinal of pod `pod_name` if it is named `<set>-<ordinal>` (a decimal without sign or
/// leading zeros, as the controller names them).
pub fn ordinal_of(set: &str, pod_name: &str) -> Option<usize> {
    let digits = pod_name.strip_prefix(set)?.strip_prefix('-')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The steps to take now for a set wanting `replicas` pods, given its `pods` by ordinal.
///
/// In order: replace finished pods and create missing ones in `0..replicas`; delete pods at
/// ordinals `>= replicas`, highest first; then roll out the update revision. Under
/// [`Policy::OrderedReady`] the plan stops at the first pod that is missing, terminating or not
/// healthy, so at most one step is returned. The rolling update only starts once nothing else
/// is to be done, and under both policies waits for unhealthy pods above the one it replaces.
pub fn plan(
    replicas: usize,
    policy: Policy,
    strategy: Strategy,
    update_revision: &str,
    pods: &BTreeMap<usize, PodState>,
) -> Vec<Step> {
    let ordered = policy == Policy::OrderedReady;
    let mut steps = Vec::new();
    for ord in 0..replicas {
        match pods.get(&ord) {
            None => steps.push(Step::Create(ord)),
            Some(p) if p.finished && !p.terminating => steps.push(Step::Delete(ord)),
            Some(p) if p.terminating || !p.healthy => {}
            Some(_) => continue,
        }
        if ordered {
            return steps;
        }
    }
    for (&ord, p) in pods.range(replicas..).rev() {
        if !p.terminating {
            steps.push(Step::Delete(ord));
        }
        if ordered {
            return steps;
        }
    }
    if !steps.is_empty() {
        return steps;
    }
    let Strategy::RollingUpdate { partition } = strategy else {
        return steps;
    };
    for ord in (partition..replicas).rev() {
        let Some(p) = pods.get(&ord) else {
            break;
        };
        if p.revision != update_revision && !p.terminating {
            steps.push(Step::Delete(ord));
            break;
        }
        if p.terminating || !p.healthy {
            break;
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(revision: &str, healthy: bool) -> PodState {
        PodState {
            revision: revision.into(),
            terminating: false,
            finished: false,
            healthy,
        }
    }

    fn pods(list: &[(usize, PodState)]) -> BTreeMap<usize, PodState> {
        list.iter().cloned().collect()
    }

    const ROLL: Strategy = Strategy::RollingUpdate { partition: 0 };

    #[test]
    fn ordinals_are_parsed_strictly() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-db-1"), None);
        assert_eq!(ordinal_of("web", "webb-1"), None);
        assert_eq!(ordinal_of("web-db", "web-db-3"), Some(3));
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_ready() {
        let p = |list: &[(usize, PodState)]| plan(3, Policy::OrderedReady, ROLL, "r", &pods(list));
        assert_eq!(p(&[]), [Step::Create(0)]);
        assert_eq!(
            p(&[(0, pod("r", false))]),
            [],
            "waits for pod 0 to be ready"
        );
        assert_eq!(p(&[(0, pod("r", true))]), [Step::Create(1)]);
        assert_eq!(
            p(&[(0, pod("r", true)), (1, pod("r", true))]),
            [Step::Create(2)]
        );
        // A hole below is filled before anything above is touched.
        assert_eq!(
            p(&[(1, pod("r", true)), (2, pod("r", true))]),
            [Step::Create(0)]
        );
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        let p = |n, list: &[(usize, PodState)]| plan(n, Policy::Parallel, ROLL, "r", &pods(list));
        assert_eq!(
            p(3, &[(1, pod("r", false))]),
            [Step::Create(0), Step::Create(2)]
        );
        assert_eq!(
            p(
                1,
                &[
                    (0, pod("r", true)),
                    (1, pod("r", true)),
                    (2, pod("r", false))
                ]
            ),
            [Step::Delete(2), Step::Delete(1)]
        );
    }

    #[test]
    fn ordered_scale_down_from_the_highest_waiting_for_each() {
        let mut set = pods(&[
            (0, pod("r", true)),
            (1, pod("r", true)),
            (2, pod("r", true)),
        ]);
        let p = |set: &BTreeMap<usize, PodState>| plan(1, Policy::OrderedReady, ROLL, "r", set);
        assert_eq!(p(&set), [Step::Delete(2)]);
        set.get_mut(&2).unwrap().terminating = true;
        assert_eq!(p(&set), [], "waits for pod 2 to be gone");
        set.remove(&2);
        assert_eq!(p(&set), [Step::Delete(1)]);
    }

    #[test]
    fn finished_pods_are_replaced() {
        let mut failed = pod("r", false);
        failed.finished = true;
        let set = pods(&[(0, pod("r", true)), (1, failed)]);
        assert_eq!(
            plan(2, Policy::OrderedReady, ROLL, "r", &set),
            [Step::Delete(1)]
        );
        // Gone: recreated with the same ordinal.
        let set = pods(&[(0, pod("r", true))]);
        assert_eq!(
            plan(2, Policy::OrderedReady, ROLL, "r", &set),
            [Step::Create(1)]
        );
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition_one_at_a_time() {
        let roll = |set: &BTreeMap<usize, PodState>, partition| {
            plan(
                3,
                Policy::OrderedReady,
                Strategy::RollingUpdate { partition },
                "new",
                set,
            )
        };
        let mut set = pods(&[
            (0, pod("old", true)),
            (1, pod("old", true)),
            (2, pod("old", true)),
        ]);
        assert_eq!(roll(&set, 1), [Step::Delete(2)]);
        set.get_mut(&2).unwrap().terminating = true;
        assert_eq!(roll(&set, 1), [], "waits for pod 2 to go");
        set.insert(2, pod("new", false));
        assert_eq!(
            roll(&set, 1),
            [],
            "ordered: waits for the new pod 2 to be ready"
        );
        set.insert(2, pod("new", true));
        assert_eq!(roll(&set, 1), [Step::Delete(1)]);
        set.insert(1, pod("new", true));
        assert_eq!(roll(&set, 1), [], "pod 0 is below the partition");
        assert_eq!(roll(&set, 0), [Step::Delete(0)]);
        // Parallel management still updates one pod at a time, waiting for unhealthy ones.
        let mut set = pods(&[(0, pod("old", true)), (1, pod("new", false))]);
        let par = |set: &BTreeMap<usize, PodState>| plan(2, Policy::Parallel, ROLL, "new", set);
        assert_eq!(par(&set), []);
        set.get_mut(&1).unwrap().healthy = true;
        assert_eq!(par(&set), [Step::Delete(0)]);
    }

    #[test]
    fn on_delete_leaves_old_pods_alone() {
        let set = pods(&[(0, pod("old", true)), (1, pod("old", true))]);
        assert_eq!(
            plan(2, Policy::OrderedReady, Strategy::OnDelete, "new", &set),
            []
        );
        let set = pods(&[(0, pod("old", true))]);
        assert_eq!(
            plan(2, Policy::OrderedReady, Strategy::OnDelete, "new", &set),
            [Step::Create(1)]
        );
    }
}
