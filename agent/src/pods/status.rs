//! The pod status the agent reports: phase, conditions, container statuses, IPs.
//!
//! Pure: built from the pod, what the runtime reported ([`Observed`]), why containers that
//! are not running wait, and probe results. Timestamps are whole seconds (what the API keeps),
//! and a condition keeps its `lastTransitionTime` while its status stays the same, so an
//! unchanged pod gives an identical status and the sync loop can skip the write.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::observed::{Instance, Observed};

/// Prefix of `containerID` in statuses: the runtime's name.
pub const CONTAINER_ID_PREFIX: &str = "containerd://";

/// Why a container is not running, as its `waiting` state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Machine-readable reason, e.g. `ErrImageNeverPull`, `CrashLoopBackOff`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// Inputs of [`pod_status`] besides the pod.
#[derive(Debug, Default)]
pub struct StatusInput<'a> {
    /// The pod's containers as the runtime reports them.
    pub observed: Option<&'a Observed>,
    /// Why containers wait, by container name.
    pub waiting: HashMap<String, Waiting>,
    /// Readiness verdicts by container name (absent: not yet probed).
    pub readiness: HashMap<String, bool>,
    /// Startup verdicts by container name (absent: not yet passed).
    pub started: HashMap<String, bool>,
    /// The pod's IP from its sandbox.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: Option<String>,
    /// The sandbox failed to start: containers wait for it.
    pub sandbox_error: Option<Waiting>,
}

/// A CRI time (nanoseconds since the epoch) as an API time, in whole seconds; `None` for 0.
pub fn cri_time(nanos: i64) -> Option<Time> {
    (nanos > 0)
        .then(|| Timestamp::from_second(nanos / 1_000_000_000).ok())
        .flatten()
        .map(Time)
}

/// Now, in whole seconds.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time"))
}

/// The status of `pod` from `input`, keeping `startTime` and condition transition times of
/// its current status.
pub fn pod_status(pod: &Pod, input: &StatusInput<'_>) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let now = now();
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, input, "PodInitializing", false))
        .collect();
    let initialized = init.iter().all(succeeded);
    let app_default = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let app: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, input, app_default, true))
        .collect();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let phase = phase(policy, &init, &app);
    let unready: Vec<&str> = app
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let previous = old
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == status);
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: previous
                .and_then(|p| p.last_transition_time.clone())
                .or_else(|| Some(now.clone())),
            reason: (!ok).then(|| reason.to_string()),
            message: (!ok && !message.is_empty()).then_some(message),
            ..Default::default()
        }
    };
    let not_init: Vec<&str> = init
        .iter()
        .filter(|s| !succeeded(s))
        .map(|s| s.name.as_str())
        .collect();
    let ready_reason = if phase == "Succeeded" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_msg = format!("containers with unready status: [{}]", unready.join(" "));
    let conditions = vec![
        cond(
            "Initialized",
            initialized,
            "ContainersNotInitialized",
            format!(
                "containers with incomplete status: [{}]",
                not_init.join(" ")
            ),
        ),
        cond(
            "Ready",
            unready.is_empty(),
            ready_reason,
            unready_msg.clone(),
        ),
        cond(
            "ContainersReady",
            unready.is_empty(),
            ready_reason,
            unready_msg,
        ),
        cond("PodScheduled", true, "", String::new()),
    ];
    let pod_ip = input
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())
        .or(old.pod_ip.clone());
    let host_ip = input.host_ip.clone().or(old.host_ip.clone());
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(app),
        init_container_statuses: (!init.is_empty()).then_some(init),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        host_ips: host_ip.clone().map(|ip| vec![HostIP { ip }]),
        host_ip,
        start_time: old.start_time.clone().or(Some(now)),
        ..old
    }
}

/// The phase from the restart policy and the container statuses (the kubelet's rules).
pub fn phase(policy: &str, init: &[ContainerStatus], app: &[ContainerStatus]) -> &'static str {
    if init.iter().any(|s| failed_for_good(s, policy)) {
        return "Failed";
    }
    if !init.iter().all(succeeded) {
        return "Pending";
    }
    let mut pending = 0;
    let mut running = 0;
    let mut failed = 0;
    let mut done_ok = 0;
    for s in app {
        let state = s.state.clone().unwrap_or_default();
        let last = s.last_state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = state.terminated {
            if t.exit_code == 0 {
                done_ok += 1;
            } else {
                failed += 1;
            }
        } else if last.terminated.is_some() {
            // Waiting to be restarted (back-off): it ran and exited.
            failed += 1;
        } else {
            pending += 1;
        }
    }
    if pending > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else {
        match policy {
            "Never" if failed > 0 => "Failed",
            "Never" => "Succeeded",
            "OnFailure" if failed == 0 && done_ok == app.len() => "Succeeded",
            _ => "Running",
        }
    }
}

/// Whether the phase is final: nothing will run in the pod again.
pub fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed")
}

/// An init container that exited 0.
fn succeeded(s: &ContainerStatus) -> bool {
    s.state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// An init container that failed and will not be retried.
fn failed_for_good(s: &ContainerStatus, policy: &str) -> bool {
    policy == "Never"
        && s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0)
}

/// The terminated state of an exited instance.
fn terminated(i: &Instance) -> ContainerState {
    let reason = if !i.reason.is_empty() {
        i.reason.clone()
    } else if i.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: i.exit_code,
            reason: Some(reason),
            message: (!i.message.is_empty()).then(|| i.message.clone()),
            started_at: cri_time(i.started_at),
            finished_at: cri_time(i.finished_at),
            container_id: Some(format!("{CONTAINER_ID_PREFIX}{}", i.id)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A waiting state.
fn waiting(w: &Waiting) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason.clone()),
            message: (!w.message.is_empty()).then(|| w.message.clone()),
        }),
        ..Default::default()
    }
}

/// The status of one container.
fn container_status(
    c: &Container,
    input: &StatusInput<'_>,
    default_reason: &str,
    app: bool,
) -> ContainerStatus {
    let latest = input.observed.and_then(|o| o.latest(&c.name));
    let previous = input.observed.and_then(|o| o.previous(&c.name));
    let default_wait = Waiting {
        reason: default_reason.into(),
        message: String::new(),
    };
    let why = input
        .waiting
        .get(&c.name)
        .or(input.sandbox_error.as_ref())
        .unwrap_or(&default_wait);
    let (state, last) = match latest {
        Some(i) if i.running() => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: cri_time(i.started_at),
                }),
                ..Default::default()
            },
            previous.map(terminated),
        ),
        Some(i) if i.exited() => match input.waiting.get(&c.name) {
            Some(w) => (waiting(w), Some(terminated(i))),
            None => (terminated(i), previous.map(terminated)),
        },
        _ => (waiting(why), previous.map(terminated)),
    };
    let running = state.running.is_some();
    let started = running
        && (c.startup_probe.is_none() || input.started.get(&c.name).copied().unwrap_or(false));
    let ready = started
        && (!app
            || c.readiness_probe.is_none()
            || input.readiness.get(&c.name).copied().unwrap_or(false));
    ContainerStatus {
        name: c.name.clone(),
        state: Some(state),
        last_state: Some(last.unwrap_or_default()),
        ready,
        started: Some(started),
        restart_count: latest.map_or(0, |i| i.attempt as i32),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|i| i.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|i| format!("{CONTAINER_ID_PREFIX}{}", i.id)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::api;
    use k8s_openapi::api::core::v1::PodSpec;

    fn inst(name: &str, attempt: u32, state: api::ContainerState, code: i32) -> Instance {
        Instance {
            id: format!("{name}{attempt}"),
            name: name.into(),
            attempt,
            state,
            started_at: 1_700_000_000_123_456_789,
            finished_at: if state == api::ContainerState::ContainerExited {
                1_700_000_005_000_000_000
            } else {
                0
            },
            exit_code: code,
            reason: String::new(),
            message: String::new(),
            image_ref: "sha256:abc".into(),
        }
    }

    fn pod(policy: &str, readiness: bool) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("img".into()),
                    readiness_probe: readiness.then(Default::default),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cond(s: &PodStatus, t: &str) -> String {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn running_container_makes_a_ready_running_pod() {
        use api::ContainerState::*;
        let o = Observed::new([inst("app", 0, ContainerRunning, 0)]);
        let input = StatusInput {
            observed: Some(&o),
            pod_ip: Some("10.1.0.5".into()),
            host_ip: Some("192.0.2.1".into()),
            ..Default::default()
        };
        let s = pod_status(&pod("Always", false), &input);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready"), "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("containerd://app0"));
        let started = cs
            .state
            .as_ref()
            .unwrap()
            .running
            .as_ref()
            .unwrap()
            .started_at
            .clone();
        assert_eq!(started.unwrap().0.as_second(), 1_700_000_000);
        assert_eq!(s.pod_ip.as_deref(), Some("10.1.0.5"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "10.1.0.5");
        // With a readiness probe: not ready until it passed.
        let s = pod_status(&pod("Always", true), &input);
        assert_eq!(cond(&s, "Ready"), "False");
    }

    #[test]
    fn an_unchanged_pod_gives_an_identical_status() {
        use api::ContainerState::*;
        let o = Observed::new([inst("app", 0, ContainerRunning, 0)]);
        let input = StatusInput {
            observed: Some(&o),
            ..Default::default()
        };
        let mut p = pod("Always", false);
        let first = pod_status(&p, &input);
        p.status = Some(first.clone());
        assert_eq!(pod_status(&p, &input), first);
    }

    #[test]
    fn crash_loop_is_running_with_last_state() {
        use api::ContainerState::*;
        let o = Observed::new([
            inst("app", 0, ContainerExited, 1),
            inst("app", 1, ContainerExited, 1),
        ]);
        let mut input = StatusInput {
            observed: Some(&o),
            ..Default::default()
        };
        input.waiting.insert(
            "app".into(),
            Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off".into(),
            },
        );
        let s = pod_status(&pod("Always", false), &input);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let t = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
    }

    #[test]
    fn phases_by_restart_policy() {
        use api::ContainerState::*;
        let exited = |code| Observed::new([inst("app", 0, ContainerExited, code)]);
        let phase_of = |policy: &str, o: &Observed| {
            let input = StatusInput {
                observed: Some(o),
                ..Default::default()
            };
            pod_status(&pod(policy, false), &input).phase.unwrap()
        };
        assert_eq!(phase_of("Never", &exited(0)), "Succeeded");
        assert_eq!(phase_of("Never", &exited(2)), "Failed");
        assert_eq!(phase_of("OnFailure", &exited(0)), "Succeeded");
        assert_eq!(phase_of("OnFailure", &exited(2)), "Running");
        assert_eq!(phase_of("Always", &exited(0)), "Running");
        assert_eq!(phase_of("Always", &Observed::default()), "Pending");
    }

    #[test]
    fn missing_image_waits_with_its_reason() {
        let mut input = StatusInput::default();
        input.waiting.insert(
            "app".into(),
            Waiting {
                reason: "ErrImageNeverPull".into(),
                message: "img not present".into(),
            },
        );
        let s = pod_status(&pod("Always", false), &input);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImageNeverPull"));
        assert!(!cs.ready);
    }
}
