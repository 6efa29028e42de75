//! Keeping a running pod's volume files current: configMap, secret, downwardAPI and projected
//! volumes are compared with the API every `volume_refresh_interval` (service account tokens
//! once they near their expiry) and swapped atomically when they changed, and the pod's volume
//! directories and tokens go when the pod goes.

use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;

use super::super::env::PodFacts;
use super::super::events::EventType::Warning;
use super::super::volumes::{refresh, remove_pod_volumes};
use super::{key, Sandbox, Worker};

impl Worker {
    /// Refreshes the pod's projected volume files when the refresh interval has passed.
    pub(super) async fn refresh_volumes(&mut self, pod: &Pod, sb: &Sandbox) {
        let every = self.ctx.config.volume_refresh_interval;
        if self
            .volumes_refreshed_at
            .is_some_and(|t| t.elapsed() < every)
        {
            return;
        }
        self.volumes_refreshed_at = Some(Instant::now());
        let host_ip = self.ctx.config.host_ip();
        let facts = PodFacts {
            pod,
            pod_ip: &sb.ip,
            host_ip: &host_ip,
        };
        let ctx = self.ctx.clone();
        let (changed, errors) =
            refresh(&ctx.client, &ctx.tokens, &ctx.config.pods_dir, facts).await;
        if !changed.is_empty() {
            tracing::info!(pod = %key(pod), volumes = ?changed, "volume files updated");
        }
        for e in errors {
            let msg = e.to_string();
            // Once per message: a ConfigMap that stays missing is not reported every interval.
            if self.reported.insert(format!("FailedMount/{msg}")) {
                tracing::warn!(pod = %key(pod), "refreshing volumes: {msg}");
                ctx.recorder.emit(pod, None, Warning, "FailedMount", &msg);
            }
        }
    }

    /// Removes the pod's volume directories (its containers are gone); a failure is logged
    /// and left to the orphan sweep.
    pub(super) fn remove_volumes(&self, pod: &Pod) {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if uid.is_empty() {
            return;
        }
        self.ctx.tokens.forget(uid);
        if let Err(e) = remove_pod_volumes(&self.ctx.config.pods_dir, uid) {
            tracing::warn!(pod = %key(pod), "removing volumes: {e}");
        }
    }
}
