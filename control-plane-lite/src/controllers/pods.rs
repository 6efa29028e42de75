//! Pod state as the workload and endpoint controllers read it.

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::jiff::Timestamp;

/// The pod's `Ready` condition, if reported.
fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether the kubelet reports the pod Ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let Some(cond) = ready_condition(pod).filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    cond.last_transition_time
        .as_ref()
        .is_some_and(|t| t.0 + std::time::Duration::from_secs(min_ready_seconds as u64) <= now)
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's phase (`Pending` when unset).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod counts towards its owner's replicas: not terminating and not finished.
pub fn is_active(pod: &Pod) -> bool {
    !is_terminating(pod) && !matches!(phase(pod), "Succeeded" | "Failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(ready: &str, since: Timestamp) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    last_transition_time: Some(Time(since)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_and_availability() {
        let now = Timestamp::now();
        let p = pod("True", now);
        assert!(is_ready(&p) && is_available(&p, 0, now));
        assert!(!is_available(&p, 10, now));
        assert!(is_available(
            &p,
            10,
            now + std::time::Duration::from_secs(10)
        ));
        assert!(!is_ready(&pod("False", now)));
        assert!(is_active(&p));
        assert!(!is_active(&Pod {
            status: Some(PodStatus {
                phase: Some("Failed".into()),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
}
