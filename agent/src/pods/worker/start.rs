//! Starting a pod's containers: image check, environment, create and start, the postStart
//! hook, restarts with back-off, and recording why a container waits when it cannot start.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::super::container::container_config;
use super::super::env::{container_env, PodFacts};
use super::super::events::EventType::{Normal, Warning};
use super::super::hooks::{handler, kill_container, run_handler, Hook, POST_START_TIMEOUT};
use super::super::observed::{Instance, Observed};
use super::super::sandbox::log_directory;
use super::super::status::Waiting;
use super::super::volumes::container_mounts;
use super::{key, secs, Sandbox, Worker};

impl Worker {
    /// Restarts exited instance `i` of `c` unless it is in back-off.
    pub(super) async fn restart(
        &mut self,
        pod: &Pod,
        sb: &Sandbox,
        c: &Container,
        i: &Instance,
        observed: &Observed,
    ) -> bool {
        let policy = self.ctx.config.backoff;
        let now = SystemTime::now();
        let finished = SystemTime::UNIX_EPOCH + Duration::from_nanos(i.finished_at.max(0) as u64);
        let b = self.backoff.entry(c.name.clone()).or_default();
        if b.remaining(&policy, finished, now).is_some() {
            let msg = format!(
                "back-off {}s restarting failed container={} pod={}",
                b.delay().as_secs(),
                c.name,
                key(pod)
            );
            self.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: msg,
                },
            );
            let event_key = format!("BackOff/{}/{}", c.name, i.attempt);
            if self.reported.insert(event_key) {
                let msg = "Back-off restarting failed container";
                self.ctx
                    .recorder
                    .emit(pod, Some(&c.name), Warning, "BackOff", msg);
            }
            return false;
        }
        b.restarted(&policy, now);
        self.touch();
        // Keep only the instance that just exited (for lastState and logs), like the kubelet.
        for old in observed.all().filter(|o| o.name == c.name && o.id != i.id) {
            if let Err(e) = self.ctx.cri.remove_container(&old.id).await {
                tracing::warn!(pod = %key(pod), container = %old.id, "removing: {e}");
            }
        }
        self.start(pod, sb, c, i.attempt + 1).await
    }

    /// Starts an instance that was created but never started (e.g. the agent stopped between
    /// the two calls).
    pub(super) async fn start_created(&mut self, pod: &Pod, c: &Container, i: &Instance) -> bool {
        self.touch();
        match self.ctx.cri.start_container(&i.id).await {
            Ok(()) => {
                let msg = format!("Started container {}", c.name);
                self.ctx
                    .recorder
                    .emit(pod, Some(&c.name), Normal, "Started", &msg);
                true
            }
            Err(e) => {
                self.wait(
                    pod,
                    c,
                    "RunContainerError",
                    "Failed",
                    e.to_string(),
                    i.attempt,
                )
                .await;
                false
            }
        }
    }

    /// Creates and starts attempt `attempt` of `c`, or records why it cannot.
    pub(super) async fn start(
        &mut self,
        pod: &Pod,
        sb: &Sandbox,
        c: &Container,
        attempt: u32,
    ) -> bool {
        let ctx = self.ctx.clone();
        let name = c.name.as_str();
        let image = c.image.clone().unwrap_or_default();
        match ctx.cri.image_status(&image).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let never = c.image_pull_policy.as_deref() == Some("Never");
                let (reason, event, msg) = if never {
                    (
                        "ErrImageNeverPull",
                        "ErrImageNeverPull",
                        format!(
                            "Container image {image:?} is not present with pull policy of Never"
                        ),
                    )
                } else {
                    (
                        "ErrImagePull",
                        "Failed",
                        format!("Failed to pull image {image:?}: not present on the node, and this node does not pull images"),
                    )
                };
                self.wait(pod, c, reason, event, msg, attempt).await;
                return false;
            }
            Err(e) => {
                self.wait(pod, c, "ErrImagePull", "Failed", e.to_string(), attempt)
                    .await;
                return false;
            }
        }
        let host_ip = ctx.config.host_ip();
        let facts = PodFacts {
            pod,
            pod_ip: &sb.ip,
            host_ip: &host_ip,
        };
        let env = match ctx.services.vars(pod).await {
            Ok(base) => container_env(&ctx.client, facts, c, base).await,
            Err(e) => Err(e),
        };
        let config = match env {
            Ok(env) => container_config(pod, c, attempt, &env).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut config = match config {
            Ok(cfg) => cfg,
            Err(msg) => {
                self.wait(pod, c, "CreateContainerConfigError", "Failed", msg, attempt)
                    .await;
                return false;
            }
        };
        match container_mounts(&ctx.client, &ctx.tokens, &ctx.config.pods_dir, facts, c).await {
            Ok(mounts) => config.mounts = mounts,
            Err(e) => {
                let reason = e.waiting_reason();
                self.wait(pod, c, reason, "FailedMount", e.to_string(), attempt)
                    .await;
                return false;
            }
        }
        self.touch();
        let log_dir = log_directory(&ctx.config, pod).join(name);
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            let msg = format!("creating log directory {}: {e}", log_dir.display());
            self.wait(pod, c, "CreateContainerError", "Failed", msg, attempt)
                .await;
            return false;
        }
        self.trace.mark("container config");
        let id = match ctx
            .cri
            .create_container(&sb.id, config, sb.config.clone())
            .await
        {
            Ok(id) => id,
            Err(e) => {
                self.wait(
                    pod,
                    c,
                    "CreateContainerError",
                    "Failed",
                    e.to_string(),
                    attempt,
                )
                .await;
                return false;
            }
        };
        self.trace.mark("container created");
        let msg = format!("Created container {name}");
        ctx.recorder.emit(pod, Some(name), Normal, "Created", &msg);
        if let Err(e) = ctx.cri.start_container(&id).await {
            self.wait(
                pod,
                c,
                "RunContainerError",
                "Failed",
                e.to_string(),
                attempt,
            )
            .await;
            return true;
        }
        self.trace.mark("container started");
        tracing::info!(pod = %key(pod), container = name, attempt, "started");
        let msg = format!("Started container {name}");
        ctx.recorder.emit(pod, Some(name), Normal, "Started", &msg);
        self.waiting.remove(name);
        self.post_start(pod, c, &id, &sb.ip).await;
        true
    }

    /// Runs `c`'s postStart hook in its just started instance `id`, holding the sync (and so
    /// the Running status) until it returns. On failure: a `FailedPostStartHook` event, the
    /// instance is killed (preStop and grace included, as the kubelet does) and `c` waits with
    /// `PostStartHookError` until the restart policy restarts it. Returns whether it passed.
    pub(super) async fn post_start(
        &mut self,
        pod: &Pod,
        c: &Container,
        id: &str,
        pod_ip: &str,
    ) -> bool {
        let Some(h) = handler(c, Hook::PostStart) else {
            return true;
        };
        let ctx = self.ctx.clone();
        let Err(msg) = run_handler(&ctx.cri, h, pod, c, id, pod_ip, POST_START_TIMEOUT).await
        else {
            return true;
        };
        tracing::warn!(pod = %key(pod), container = %c.name, "{msg}");
        ctx.recorder
            .emit(pod, Some(&c.name), Warning, "FailedPostStartHook", &msg);
        let why = format!(
            "Container {} failed its postStart hook, will be restarted",
            c.name
        );
        ctx.recorder
            .emit(pod, Some(&c.name), Normal, "Killing", &why);
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        self.touch();
        if let Err(e) = kill_container(&ctx, pod, &c.name, id, secs(grace)).await {
            tracing::warn!(pod = %key(pod), container = %c.name, "{why}: stopping: {e}");
        }
        self.waiting.insert(
            c.name.clone(),
            Waiting {
                reason: "PostStartHookError".into(),
                message: msg,
            },
        );
        false
    }

    /// Records that `c` waits for `reason`, posting a Warning event `event` once per reason
    /// and attempt.
    pub(super) async fn wait(
        &mut self,
        pod: &Pod,
        c: &Container,
        reason: &str,
        event: &str,
        message: String,
        attempt: u32,
    ) {
        // Logged and posted once per reason and attempt; later syncs retry quietly.
        if self
            .reported
            .insert(format!("{reason}/{}/{attempt}", c.name))
        {
            tracing::warn!(pod = %key(pod), container = %c.name, reason, "{message}");
            self.ctx
                .recorder
                .emit(pod, Some(&c.name), Warning, event, &message);
        }
        self.waiting.insert(
            c.name.clone(),
            Waiting {
                reason: reason.into(),
                message,
            },
        );
    }
}
