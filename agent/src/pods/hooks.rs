//! Container lifecycle hooks (`postStart`, `preStop`) and killing a container the kubelet's
//! way: `Killing` is the caller's event, then the preStop hook, then StopContainer with what is
//! left of the grace period.
//!
//! Handlers are `exec` (CRI `ExecSync` in the container), `httpGet` (from the agent's network
//! namespace to the pod IP, like [`super::probe`]) and `sleep` (the agent waits). The
//! deprecated `tcpSocket` handler fails at run time, as the kubelet's does.
//!
//! postStart runs right after StartContainer and holds the pod's sync (so the container is not
//! reported Running until it returns); the caller kills the container when it fails. preStop
//! runs before the stop signal and is bounded by the grace period; whatever it used is taken
//! from the SIGTERM wait, which still gets the kubelet's 2 s minimum. A failed preStop is
//! reported and termination goes on.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Pod};

use super::events::EventType::Warning;
use super::probe::{http_get, resolve_port};
use super::teardown::MIN_GRACE;
use super::worker::key;
use super::Context;
use crate::cri::{CriClient, CriError};

/// The bound of a postStart hook (the kubelet has none besides the runtime's request
/// timeout): a hook that hangs longer fails, so the container is killed and restarted.
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Which hook, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `lifecycle.postStart`.
    PostStart,
    /// `lifecycle.preStop`.
    PreStop,
}

/// Runs `handler` for container `c` (runtime id `id`) of a pod with IP `pod_ip`, for at most
/// `limit`. `Err` is the kubelet's message for the hook's failure event.
pub async fn run_handler(
    cri: &CriClient,
    handler: &LifecycleHandler,
    pod: &Pod,
    c: &Container,
    id: &str,
    pod_ip: &str,
    limit: Duration,
) -> Result<(), String> {
    let who = format!("Container {:?} in Pod {:?}", c.name, key(pod));
    if let Some(exec) = &handler.exec {
        let cmd: Vec<&str> = exec.command.iter().flatten().map(String::as_str).collect();
        let failed = |error: String, output: String| {
            format!("Exec lifecycle hook ({cmd:?}) for {who} failed - error: {error}, message: {output:?}")
        };
        let r = cri
            .exec_sync(id, &cmd, limit)
            .await
            .map_err(|e| failed(e.to_string(), String::new()))?;
        if r.exit_code == 0 {
            return Ok(());
        }
        let output = String::from_utf8_lossy(&r.stdout) + String::from_utf8_lossy(&r.stderr);
        return Err(failed(
            format!("command {cmd:?} exited with {}", r.exit_code),
            output.into_owned(),
        ));
    }
    if let Some(h) = &handler.http_get {
        return http_handler(h, c, pod_ip, limit, &who).await;
    }
    if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(limit)).await;
        return Ok(());
    }
    Err(format!(
        "lifecycle hook for {who} has no supported handler (tcpSocket is not supported)"
    ))
}

/// An `httpGet` hook: a GET from the agent's namespace (to the pod IP unless `host` is set);
/// 2xx and 3xx pass.
async fn http_handler(
    h: &HTTPGetAction,
    c: &Container,
    pod_ip: &str,
    limit: Duration,
    who: &str,
) -> Result<(), String> {
    let host = h
        .host
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| pod_ip.into());
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    let failed =
        |error: String| format!("HTTP lifecycle hook ({path}) for {who} failed - error: {error}");
    let port = resolve_port(&h.port, c).map_err(failed)?;
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err(failed("HTTPS hooks are not supported".into()));
    }
    let url = format!("http://{host}:{port}{path}");
    match tokio::time::timeout(limit, http_get(&host, port, &path)).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(failed(format!("Get {url:?}: status code {code}"))),
        Ok(Err(e)) => Err(failed(format!("Get {url:?}: {e}"))),
        Err(_) => Err(failed(format!("Get {url:?}: timeout after {limit:?}"))),
    }
}

/// The hook `hook` of container `c`, if it has one.
pub fn handler(c: &Container, hook: Hook) -> Option<&LifecycleHandler> {
    let l = c.lifecycle.as_ref()?;
    match hook {
        Hook::PostStart => l.post_start.as_ref(),
        Hook::PreStop => l.pre_stop.as_ref(),
    }
}

/// The container spec named `name` among the pod's app and init containers.
fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Runs container `name`'s preStop hook (if any), then stops runtime container `id` with the
/// rest of `grace` (at least [`MIN_GRACE`]). A failed hook posts `FailedPreStopHook` and the
/// stop goes on. The pod's IP (for `httpGet`) is taken from its status.
pub async fn kill_container(
    ctx: &Context,
    pod: &Pod,
    name: &str,
    id: &str,
    grace: Duration,
) -> Result<(), CriError> {
    let mut left = grace;
    if let Some((c, h)) = container(pod, name).and_then(|c| Some(c).zip(handler(c, Hook::PreStop)))
    {
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let started = Instant::now();
        let ran = tokio::time::timeout(
            grace,
            run_handler(&ctx.cri, h, pod, c, id, &pod_ip, grace),
        )
        .await
        .unwrap_or_else(|_| Err(format!("PreStopHook for Container {name:?} in Pod {:?} did not finish within the grace period of {grace:?}", key(pod))));
        if let Err(msg) = ran {
            tracing::warn!(pod = %key(pod), container = name, "{msg}");
            ctx.recorder
                .emit(pod, Some(name), Warning, "FailedPreStopHook", &msg);
        }
        left = grace.saturating_sub(started.elapsed());
    }
    ctx.cri.stop_container(id, left.max(MIN_GRACE)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn container(lifecycle: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "c", "lifecycle": lifecycle,
            "ports": [{ "name": "http", "containerPort": 8080 }],
        }))
        .unwrap()
    }

    #[test]
    fn hooks_are_found_by_kind() {
        let c = container(serde_json::json!({
            "postStart": { "exec": { "command": ["true"] } },
            "preStop": { "sleep": { "seconds": 3 } },
        }));
        assert!(handler(&c, Hook::PostStart).unwrap().exec.is_some());
        assert_eq!(
            handler(&c, Hook::PreStop)
                .unwrap()
                .sleep
                .as_ref()
                .unwrap()
                .seconds,
            3
        );
        let bare = Container::default();
        assert!(handler(&bare, Hook::PreStop).is_none());
        let pod = Pod {
            spec: Some(PodSpec {
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    ..Default::default()
                }]),
                containers: vec![c],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(super::container(&pod, "init").is_some());
        assert!(super::container(&pod, "c").is_some());
        assert!(super::container(&pod, "x").is_none());
    }

    /// Serves one HTTP request with `status_line`; returns the port.
    async fn serve_once(status_line: &'static str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(status_line.as_bytes()).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn http_hooks_pass_on_2xx_and_name_the_status_otherwise() {
        let c = container(serde_json::json!({}));
        let limit = Duration::from_secs(30);
        let get = |port: u16| HTTPGetAction {
            port: IntOrString::Int(port.into()),
            path: Some("/hook".into()),
            ..Default::default()
        };
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        http_handler(&get(ok), &c, "127.0.0.1", limit, "c")
            .await
            .unwrap();
        let bad = serve_once("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let err = http_handler(&get(bad), &c, "127.0.0.1", limit, "c")
            .await
            .unwrap_err();
        assert!(
            err.contains("status code 500") && err.contains("/hook"),
            "{err}"
        );
        // A named port resolves through the container's ports (nothing listens on 8080 of
        // 127.0.0.2 here, so the error names that address).
        let named = HTTPGetAction {
            port: IntOrString::String("http".into()),
            ..Default::default()
        };
        let err = http_handler(&named, &c, "127.0.0.2", limit, "c")
            .await
            .unwrap_err();
        assert!(err.contains("127.0.0.2:8080"), "{err}");
    }
}
