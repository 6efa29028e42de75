//! `exec`, `attach` and `portForward`: finding the pod's running container (or ready sandbox)
//! through the CRI, asking the runtime for a streaming URL and handing the client's upgrade
//! request on to it ([`upgrade::proxy`]).
//!
//! The query is the kubelet's: `command` (repeated), and `stdin`, `stdout`, `stderr`, `tty` as
//! `1`/`true`. As in the kubelet, `tty` drops `stderr` (a terminal has one output stream), and a
//! session with no stream at all is refused before the runtime is asked.

use super::handler::{text, Body};
use super::upgrade;
use crate::cri::{api, CriClient, CriError};
use crate::pods::labels::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, RESTART_COUNT};
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;

/// Which streaming session a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// A new process in the container.
    Exec,
    /// The container's main process.
    Attach,
}

/// The streams and command of an `exec` or `attach` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The command and its arguments (`exec` only).
    pub command: Vec<String>,
    /// Whether the client sends stdin.
    pub stdin: bool,
    /// Whether the client wants stdout.
    pub stdout: bool,
    /// Whether the client wants stderr (never with `tty`).
    pub stderr: bool,
    /// Whether the process gets a terminal.
    pub tty: bool,
}

impl StreamOptions {
    /// Parses and checks the query of a `session` request.
    pub fn parse(query: Option<&str>, session: Session) -> Result<Self, String> {
        let mut opts = StreamOptions::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let on = v == "1" || v.eq_ignore_ascii_case("true");
            match k.as_ref() {
                "command" => opts.command.push(v.into_owned()),
                "stdin" => opts.stdin = on,
                "stdout" => opts.stdout = on,
                "stderr" => opts.stderr = on,
                "tty" => opts.tty = on,
                _ => {}
            }
        }
        if opts.tty {
            opts.stderr = false;
        }
        if !opts.stdin && !opts.stdout && !opts.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        if session == Session::Exec && opts.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        Ok(opts)
    }
}

/// The label filter selecting one pod's runtime objects by namespace and name.
fn pod_selector(namespace: &str, pod: &str) -> HashMap<String, String> {
    [
        (POD_NAMESPACE.to_string(), namespace.to_string()),
        (POD_NAME.to_string(), pod.to_string()),
    ]
    .into()
}

/// The running containers named `container` in pod `namespace/pod`, newest run first.
pub async fn running_containers(
    cri: &CriClient,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<api::Container>, CriError> {
    let mut label_selector = pod_selector(namespace, pod);
    label_selector.insert(CONTAINER_NAME.into(), container.into());
    let mut found = cri
        .list_containers(Some(api::ContainerFilter {
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerRunning as i32,
            }),
            label_selector,
            ..Default::default()
        }))
        .await?;
    found.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(found)
}

/// Whether run `restart` of the container is still running: a followed log ends when not.
pub async fn run_is_running(
    cri: &CriClient,
    namespace: &str,
    pod: &str,
    container: &str,
    restart: u32,
) -> Result<bool, CriError> {
    let restart = restart.to_string();
    Ok(running_containers(cri, namespace, pod, container)
        .await?
        .iter()
        .any(|c| c.annotations.get(RESTART_COUNT) == Some(&restart)))
}

/// `exec` or `attach` into `container` of pod `namespace/pod`.
pub async fn stream<B>(
    cri: &CriClient,
    req: Request<B>,
    session: Session,
    target: (&str, &str, &str),
) -> Response<Body> {
    match stream_url(cri, req.uri().query(), session, target).await {
        Ok(url) => upgrade::proxy(req, &url).await,
        Err(answer) => answer,
    }
}

/// The runtime's streaming URL for an `exec` or `attach` request, or the error answer.
async fn stream_url(
    cri: &CriClient,
    query: Option<&str>,
    session: Session,
    (namespace, pod, container): (&str, &str, &str),
) -> Result<String, Response<Body>> {
    let opts = StreamOptions::parse(query, session)
        .map_err(|message| text(StatusCode::BAD_REQUEST, message))?;
    let running = running_containers(cri, namespace, pod, container)
        .await
        .map_err(runtime_error)?;
    let id = running.into_iter().next().map(|c| c.id).ok_or_else(|| {
        text(
            StatusCode::NOT_FOUND,
            format!("container {container} of pod {namespace}/{pod} is not running"),
        )
    })?;
    let url = match session {
        Session::Exec => {
            cri.exec(api::ExecRequest {
                container_id: id,
                cmd: opts.command,
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
        }
        Session::Attach => {
            cri.attach(api::AttachRequest {
                container_id: id,
                stdin: opts.stdin,
                tty: opts.tty,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
        }
    };
    url.map_err(runtime_error)
}

/// `portForward` into the network namespace of pod `namespace/pod`; the client names the ports
/// inside the session.
pub async fn port_forward<B>(
    cri: &CriClient,
    req: Request<B>,
    namespace: &str,
    pod: &str,
) -> Response<Body> {
    match port_forward_url(cri, namespace, pod).await {
        Ok(url) => upgrade::proxy(req, &url).await,
        Err(answer) => answer,
    }
}

/// The runtime's streaming URL for a `portForward` request, or the error answer.
async fn port_forward_url(
    cri: &CriClient,
    namespace: &str,
    pod: &str,
) -> Result<String, Response<Body>> {
    let sandboxes = cri
        .list_pod_sandbox(Some(api::PodSandboxFilter {
            state: Some(api::PodSandboxStateValue {
                state: api::PodSandboxState::SandboxReady as i32,
            }),
            label_selector: pod_selector(namespace, pod),
            ..Default::default()
        }))
        .await
        .map_err(runtime_error)?;
    let id = sandboxes
        .into_iter()
        .max_by_key(|s| s.created_at)
        .map(|s| s.id)
        .ok_or_else(|| {
            text(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} has no ready sandbox on this node"),
            )
        })?;
    cri.port_forward(&id).await.map_err(runtime_error)
}

/// The answer for a failed runtime call.
fn runtime_error(err: CriError) -> Response<Body> {
    text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kubelet_and_the_kubectl_spelling() {
        let opts = StreamOptions::parse(
            Some("command=sh&command=-c&command=echo%20hi&stdin=1&stdout=true&stderr=true"),
            Session::Exec,
        )
        .unwrap();
        assert_eq!(opts.command, ["sh", "-c", "echo hi"]);
        assert!(opts.stdin && opts.stdout && opts.stderr && !opts.tty);
    }

    #[test]
    fn a_terminal_has_no_separate_stderr() {
        let opts =
            StreamOptions::parse(Some("command=sh&stdin=1&stderr=1&tty=1"), Session::Exec).unwrap();
        assert!(opts.tty && opts.stdin && !opts.stderr);
    }

    #[test]
    fn refuses_sessions_without_streams_or_command() {
        assert_eq!(
            StreamOptions::parse(Some("command=ls&stdin=0"), Session::Exec).unwrap_err(),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        assert_eq!(
            StreamOptions::parse(Some("stdout=1"), Session::Exec).unwrap_err(),
            "you must specify at least one command for the container"
        );
        assert!(StreamOptions::parse(Some("stdout=1"), Session::Attach).is_ok());
    }
}
