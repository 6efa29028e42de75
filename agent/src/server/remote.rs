//! `exec`, `attach` and `portForward`: finding the pod's running container (or ready sandbox)
//! through the CRI, asking the runtime for a streaming URL and handing the client's upgrade
//! request on to it ([`upgrade::proxy`]).
//!
//! The query is the kubelet's: `command` (repeated), and `stdin`, `stdout`, `stderr`, `tty` as
//! `1`/`true`. As in the kubelet, `tty` drops `stderr` (a terminal has one output stream), and a
//! session with no stream at all is refused before the runtime is asked.

use super::handler::{text, Body};
use super::upgrade;
use crate::cri::{api, CriClient};
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
) -> Result<Vec<api::Container>, crate::cri::CriError> {
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
) -> Result<bool, crate::cri::CriError> {
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
    (namespace, pod, container): (&str, &str, &str),
) -> Response<Body> {
    let opts = match StreamOptions::parse(req.uri().query(), session) {
        Ok(opts) => opts,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let id = match running_containers(cri, namespace, pod, container).await {
        Ok(found) => match found.into_iter().next() {
            Some(c) => c.id,
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("container {container} of pod {namespace}/{pod} is not running"),
                )
            }
        },
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
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
    match url {
        Ok(url) => upgrade::proxy(req, &url).await,
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// `portForward` into the network namespace of pod `namespace/pod`; the client names the ports
/// inside the session.
pub async fn port_forward<B>(
    cri: &CriClient,
    req: Request<B>,
    namespace: &str,
    pod: &str,
) -> Response<Body> {
    let sandboxes = cri
        .list_pod_sandbox(Some(api::PodSandboxFilter {
            state: Some(api::PodSandboxStateValue {
                state: api::PodSandboxState::SandboxReady as i32,
            }),
            label_selector: pod_selector(namespace, pod),
            ..Default::default()
        }))
        .await;
    let id = match sandboxes {
        Ok(found) => match found.into_iter().max_by_key(|s| s.created_at) {
            Some(s) => s.id,
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("pod {namespace}/{pod} has no ready sandbox on this node"),
                )
            }
        },
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    match cri.port_forward(&id).await {
        Ok(url) => upgrade::proxy(req, &url).await,
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
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
