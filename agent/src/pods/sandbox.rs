//! The CRI sandbox config of a pod: identity, hostname, DNS, host ports, labels, log
//! directory, cgroup parent and host namespaces.
//!
//! Pure: the same pod and node settings always give the same config, which is what lets a
//! restarted agent rebuild the config of a sandbox it re-adopts (CreateContainer needs it).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use super::dns::{dns_config, ClusterDns};
use super::labels::sandbox_labels;
use super::PodManagerConfig;
use crate::cri::api;

/// The directory of `pod`'s container logs: `<pod_log_dir>/<namespace>_<name>_<uid>`, the
/// kubelet's layout, so log shippers find them.
pub fn log_directory(config: &PodManagerConfig, pod: &Pod) -> PathBuf {
    let m = &pod.metadata;
    config.pod_log_dir.join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    ))
}

/// The sandbox config for attempt `attempt` of `pod`.
pub fn sandbox_config(
    pod: &Pod,
    config: &PodManagerConfig,
    dns: &ClusterDns,
    attempt: u32,
) -> api::PodSandboxConfig {
    let m = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let hostname = if host_network {
        String::new()
    } else {
        spec.hostname
            .clone()
            .unwrap_or_else(|| m.name.clone().unwrap_or_default())
    };
    let mode = |host: Option<bool>| {
        if host.unwrap_or(false) {
            api::NamespaceMode::Node as i32
        } else {
            api::NamespaceMode::Pod as i32
        }
    };
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: log_directory(config, pod).to_string_lossy().into_owned(),
        dns_config: Some(dns_config(pod, dns)),
        port_mappings: port_mappings(pod),
        labels: sandbox_labels(pod),
        annotations: m
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: config.cgroup_parent.clone(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: mode(spec.host_network),
                    pid: mode(spec.host_pid),
                    ipc: mode(spec.host_ipc),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Host port mappings of every container port that has a `hostPort`.
fn port_mappings(pod: &Pod) -> Vec<api::PortMapping> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|&h| h > 0)?;
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => api::Protocol::Udp,
                Some("SCTP") => api::Protocol::Sctp,
                _ => api::Protocol::Tcp,
            };
            Some(api::PortMapping {
                protocol: protocol as i32,
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

    fn pod(host_network: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("u1".into());
        p.spec = Some(PodSpec {
            host_network: Some(host_network),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![
                    ContainerPort {
                        container_port: 8080,
                        host_port: Some(18080),
                        ..Default::default()
                    },
                    ContainerPort {
                        container_port: 9090,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn identity_ports_logs_and_namespaces() {
        let config = PodManagerConfig::new("n1");
        let c = sandbox_config(&pod(false), &config, &ClusterDns::default(), 2);
        let meta = c.metadata.as_ref().unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.uid.as_str(), meta.attempt),
            ("web", "u1", 2)
        );
        assert_eq!(c.hostname, "web");
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(c.port_mappings[0].host_port, 18080);
        assert!(
            c.log_directory.ends_with("default_web_u1"),
            "{}",
            c.log_directory
        );
        let ns = |c: &api::PodSandboxConfig| {
            c.linux
                .as_ref()
                .unwrap()
                .security_context
                .as_ref()
                .unwrap()
                .namespace_options
                .as_ref()
                .unwrap()
                .network
        };
        assert_eq!(ns(&c), api::NamespaceMode::Pod as i32);
        let h = sandbox_config(&pod(true), &config, &ClusterDns::default(), 0);
        assert_eq!(h.hostname, "");
        assert_eq!(ns(&h), api::NamespaceMode::Node as i32);
    }
}
