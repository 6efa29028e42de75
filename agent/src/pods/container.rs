//! The CRI config of one container of a pod: image, command and args with `$(VAR)` expanded,
//! environment, working dir, resources, security basics, labels and its log path.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::env::expand;
use super::labels::{container_labels, RESTART_COUNT};
use super::resources::{linux_resources, InvalidQuantity};
use crate::cri::api;

/// The log file of attempt `attempt` of `container`, relative to the sandbox's log directory:
/// `<container>/<restartCount>.log`, the kubelet's layout.
pub fn log_path(container: &str, attempt: u32) -> String {
    format!("{container}/{attempt}.log")
}

/// The config of attempt `attempt` (= its restart count) of `container`, with its resolved
/// environment `env`.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: &[(String, String)],
) -> Result<api::ContainerConfig, InvalidQuantity> {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, &vars)).collect()
    };
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let mut annotations: HashMap<String, String> = HashMap::new();
    annotations.insert(RESTART_COUNT.into(), attempt.to_string());
    Ok(api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(api::ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(k, v)| api::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        labels: container_labels(pod, &container.name),
        annotations,
        log_path: log_path(&container.name, attempt),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(api::LinuxContainerConfig {
            resources: linux_resources(container.resources.as_ref())?,
            security_context: Some(api::LinuxContainerSecurityContext {
                privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
                run_as_user: run_as_user.map(|value| api::Int64Value { value }),
                run_as_group: run_as_group.map(|value| api::Int64Value { value }),
                readonly_rootfs: sc
                    .and_then(|s| s.read_only_root_filesystem)
                    .unwrap_or(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn command_args_env_and_log_path() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.uid = Some("u".into());
        pod.spec = Some(PodSpec::default());
        let c = Container {
            name: "app".into(),
            image: Some("localhost/netlet-testapp:1".into()),
            command: Some(vec!["/bin/sh".into(), "-c".into()]),
            args: Some(vec!["echo $(GREETING)".into()]),
            working_dir: Some("/tmp".into()),
            ..Default::default()
        };
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        let cfg = container_config(&pod, &c, 3, &env).unwrap();
        assert_eq!(cfg.args, ["echo hi"]);
        assert_eq!(cfg.command, ["/bin/sh", "-c"]);
        assert_eq!(cfg.log_path, "app/3.log");
        assert_eq!(cfg.metadata.as_ref().unwrap().attempt, 3);
        assert_eq!(cfg.envs[0].key, "GREETING");
        assert_eq!(cfg.labels[super::super::labels::CONTAINER_NAME], "app");
        assert_eq!(cfg.working_dir, "/tmp");
    }
}
