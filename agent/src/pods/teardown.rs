//! Stopping pods: containers first with their grace period, then the sandbox (containerd runs
//! CNI DEL on StopPodSandbox), and the sweep that removes sandboxes whose pod no longer exists.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;

use super::events::EventType::Normal;
use super::hooks::kill_container;
use super::labels::{managed_selector, CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};
use super::{Context, SyncError};
use crate::cri::{api, CriError};

/// The shortest grace a container gets (the kubelet's minimum).
pub const MIN_GRACE: Duration = Duration::from_secs(2);

/// Stops the running containers of sandbox `id` with `grace` (posting Killing events, running
/// their preStop hooks), then the sandbox; removes it too when `remove`. Already-gone objects count as done.
pub async fn kill_sandbox(
    ctx: &Context,
    pod: &Pod,
    id: &str,
    grace: Duration,
    remove: bool,
) -> Result<(), SyncError> {
    let running = ctx
        .cri
        .list_containers(Some(api::ContainerFilter {
            pod_sandbox_id: id.into(),
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await?;
    let stops = running.iter().map(|c| async move {
        let name = c.labels.get(CONTAINER_NAME).cloned().unwrap_or_default();
        let msg = format!("Stopping container {name}");
        ctx.recorder.emit(pod, Some(&name), Normal, "Killing", &msg);
        ignore_not_found(kill_container(ctx, pod, &name, &c.id, grace).await)
    });
    for r in join_all(stops).await {
        r?;
    }
    ignore_not_found(ctx.cri.stop_pod_sandbox(id).await)?;
    if remove {
        ignore_not_found(ctx.cri.remove_pod_sandbox(id).await)?;
    }
    tracing::info!(sandbox = id, remove, "sandbox stopped");
    Ok(())
}

/// Stops and removes the sandboxes this agent manages whose pod uid is not in `live`, and the
/// volume directories of such pods. Returns the sandbox ids removed.
pub async fn sweep_orphans(
    ctx: &Context,
    live: &HashSet<String>,
) -> Result<Vec<String>, SyncError> {
    let sandboxes = ctx
        .cri
        .list_pod_sandbox(Some(api::PodSandboxFilter {
            label_selector: managed_selector(),
            ..Default::default()
        }))
        .await?;
    let mut removed = Vec::new();
    for s in sandboxes {
        let uid = s.labels.get(POD_UID).cloned().unwrap_or_default();
        if live.contains(&uid) {
            continue;
        }
        // The pod is gone from the API; rebuild enough of it for events and messages.
        let mut pod = Pod::default();
        pod.metadata.name = s.labels.get(POD_NAME).cloned();
        pod.metadata.namespace = s.labels.get(POD_NAMESPACE).cloned();
        pod.metadata.uid = Some(uid);
        tracing::info!(sandbox = %s.id, pod = ?pod.metadata.name, "removing orphaned sandbox");
        kill_sandbox(ctx, &pod, &s.id, MIN_GRACE, true).await?;
        removed.push(s.id);
    }
    let dirs = super::volumes::sweep_pod_dirs(&ctx.config.pods_dir, live);
    if !dirs.is_empty() {
        tracing::info!(pods = ?dirs, "removed volumes of pods no longer in the API");
    }
    Ok(removed)
}

/// `Ok` for a NotFound error: stopping or removing something already gone is success.
fn ignore_not_found(r: Result<(), CriError>) -> Result<(), CriError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}
