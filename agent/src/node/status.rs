//! The Node object this agent reports, built as pure functions of what the agent observed:
//! labels, addresses, capacity, nodeInfo and conditions. The registration loop only decides
//! when to send it.

use super::sysinfo::SystemInfo;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The version the Node reports as `kubeletVersion`: the Kubernetes API level we implement,
/// marked as ours so nobody mistakes the agent for the kubelet.
pub const KUBELET_VERSION: &str = "v1.32.0-netlet";

/// Pods per node, the kubelet's default `--max-pods`.
pub const MAX_PODS: u32 = 110;

/// The port the Node advertises for the kubelet API (logs, exec); the kubelet's default.
pub const KUBELET_PORT: i32 = 10250;

/// Labels every node carries (`kubernetes.io/hostname` is the node name, as with
/// `--hostname-override`, so it stays unique even when nodes share a kernel host name).
pub fn node_labels(node_name: &str, arch: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node_name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ])
}

/// What the status is computed from.
#[derive(Debug, Clone)]
pub struct StatusInputs<'a> {
    /// The node's name (its `Hostname` address).
    pub node_name: &'a str,
    /// The node's InternalIP.
    pub node_ip: Ipv4Addr,
    /// The machine.
    pub sys: &'a SystemInfo,
    /// `containerRuntimeVersion`, once the runtime answered.
    pub runtime_version: Option<&'a str>,
    /// Why the node is not ready for pods; empty: ready.
    pub problems: &'a [String],
}

/// The full status to write. Conditions keep `previous`'s `lastTransitionTime` while their
/// status stays the same; `lastHeartbeatTime` is `now`.
pub fn desired_status(
    inputs: &StatusInputs<'_>,
    previous: Option<&[NodeCondition]>,
    now: &Time,
) -> NodeStatus {
    let sys = inputs.sys;
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(sys.cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", sys.memory_bytes / 1024)),
        ),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", sys.ephemeral_storage_bytes / 1024)),
        ),
    ]);
    let ready = if inputs.problems.is_empty() {
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "netlet-agent is posting ready status",
        )
    } else {
        cond(
            "Ready",
            "False",
            "KubeletNotReady",
            &inputs.problems.join("; "),
        )
    };
    let conditions = [
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "netlet-agent has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "netlet-agent has no disk pressure",
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "netlet-agent has sufficient PID available",
        ),
        ready,
    ]
    .into_iter()
    .map(|(r#type, status, reason, message)| {
        let transition = previous
            .and_then(|p| p.iter().find(|c| c.type_ == r#type))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: r#type,
            status,
            reason: Some(reason),
            message: Some(message),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(transition),
        }
    })
    .collect();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: inputs.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: inputs.node_name.into(),
            },
        ]),
        allocatable: Some(resources.clone()),
        capacity: Some(resources),
        conditions: Some(conditions),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: KUBELET_PORT }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: sys.architecture.into(),
            boot_id: sys.boot_id.clone(),
            container_runtime_version: inputs.runtime_version.unwrap_or_default().into(),
            kernel_version: sys.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: sys.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: sys.os_image.clone(),
            system_uuid: sys.system_uuid.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

fn cond(t: &str, s: &str, reason: &str, message: &str) -> (String, String, String, String) {
    (t.into(), s.into(), reason.into(), message.into())
}

/// Whether `current` (as stored) differs from `desired` in a field the agent owns — addresses,
/// capacity, allocatable, daemon endpoints, node info, or one of our conditions other than by
/// its heartbeat time. Only then is a write needed before the report interval (the Lease
/// carries liveness); fields others set (images, volumes, extra conditions) are not compared.
pub fn differs_beyond_heartbeat(current: &NodeStatus, desired: &NodeStatus) -> bool {
    let strip = |c: &NodeCondition| NodeCondition {
        last_heartbeat_time: None,
        ..c.clone()
    };
    let ours: Vec<NodeCondition> = desired.conditions.iter().flatten().map(strip).collect();
    let theirs: Vec<NodeCondition> = ours
        .iter()
        .filter_map(|want| {
            current
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == want.type_)
                .map(strip)
        })
        .collect();
    current.addresses != desired.addresses
        || current.capacity != desired.capacity
        || current.allocatable != desired.allocatable
        || current.daemon_endpoints != desired.daemon_endpoints
        || current.node_info != desired.node_info
        || ours != theirs
}

/// The status of the `Ready` condition of `status`, if reported.
pub fn ready_status(status: &NodeStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn sys() -> SystemInfo {
        SystemInfo {
            cpus: 2,
            memory_bytes: 4096 * 1024 * 1024,
            ephemeral_storage_bytes: 10 * 1024 * 1024 * 1024,
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            machine_id: "m".into(),
            system_uuid: String::new(),
            boot_id: "b".into(),
            architecture: "amd64",
        }
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn inputs<'a>(sys: &'a SystemInfo, problems: &'a [String]) -> StatusInputs<'a> {
        StatusInputs {
            node_name: "n1",
            node_ip: Ipv4Addr::new(192, 0, 2, 10),
            sys,
            runtime_version: Some("containerd://1.6.20"),
            problems,
        }
    }

    #[test]
    fn status_has_capacity_addresses_info_and_ready() {
        let sys = sys();
        let s = desired_status(&inputs(&sys, &[]), None, &at(100));
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["ephemeral-storage"].0, "10485760Ki");
        assert_eq!(s.allocatable, s.capacity);
        let addrs = s.addresses.as_ref().unwrap();
        assert_eq!(
            (addrs[0].type_.as_str(), addrs[0].address.as_str()),
            ("InternalIP", "192.0.2.10")
        );
        assert_eq!(
            (addrs[1].type_.as_str(), addrs[1].address.as_str()),
            ("Hostname", "n1")
        );
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "containerd://1.6.20");
        assert_eq!(info.operating_system, "linux");
        assert_eq!(
            s.daemon_endpoints
                .as_ref()
                .unwrap()
                .kubelet_endpoint
                .as_ref()
                .unwrap()
                .port,
            10250
        );
        assert_eq!(ready_status(&s), Some("True"));
        let conds = s.conditions.as_ref().unwrap();
        assert_eq!(conds.len(), 4);
        for c in conds.iter().filter(|c| c.type_ != "Ready") {
            assert_eq!(c.status, "False", "{}", c.type_);
        }
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    }

    #[test]
    fn not_ready_names_the_problems() {
        let sys = sys();
        let problems = vec!["network plugin not ready: no podCIDR".to_string()];
        let s = desired_status(&inputs(&sys, &problems), None, &at(100));
        assert_eq!(ready_status(&s), Some("False"));
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
        assert!(ready.message.as_deref().unwrap().contains("no podCIDR"));
    }

    #[test]
    fn transition_time_kept_while_status_holds_and_heartbeat_alone_is_no_change() {
        let sys = sys();
        let problems = vec!["x".to_string()];
        let first = desired_status(&inputs(&sys, &problems), None, &at(100));
        let again = desired_status(
            &inputs(&sys, &problems),
            first.conditions.as_deref(),
            &at(110),
        );
        assert!(!differs_beyond_heartbeat(&first, &again));
        let ready = |s: &NodeStatus| {
            s.conditions
                .clone()
                .unwrap()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
        };
        assert_eq!(ready(&again).last_transition_time, Some(at(100)));
        assert_eq!(ready(&again).last_heartbeat_time, Some(at(110)));
        // Fields others own (images, extra conditions) do not count as a change.
        let mut stored = first.clone();
        stored.images = Some(vec![]);
        stored.conditions.as_mut().unwrap().push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..NodeCondition::default()
        });
        assert!(!differs_beyond_heartbeat(&stored, &again));
        assert!(differs_beyond_heartbeat(&NodeStatus::default(), &again));

        let flipped = desired_status(&inputs(&sys, &[]), again.conditions.as_deref(), &at(120));
        assert!(differs_beyond_heartbeat(&again, &flipped));
        assert_eq!(ready(&flipped).last_transition_time, Some(at(120)));
        let mem = flipped
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "MemoryPressure")
            .unwrap();
        assert_eq!(mem.last_transition_time, Some(at(100)));
    }

    #[test]
    fn labels() {
        let l = node_labels("n1", "arm64");
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["kubernetes.io/arch"], "arm64");
    }
}
