//! The node API's routes, the kubelet's paths: `GET /healthz`,
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `PodLogOptions` as the query, and the
//! upgrade requests `/exec/{namespace}/{pod}/{container}`, `/attach/…` and
//! `/portForward/{namespace}/{pod}` (GET or POST). Errors are plain text with a status code; the
//! apiserver turns them into `Status` objects.

use super::https::Denial;
use super::log_files::{ContainerLogs, LogFileError};
use super::options::LogOptions;
use super::remote::{self, Session};
use super::stream::{self, LiveRun};
use crate::cri::CriClient;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use std::convert::Infallible;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncWrite};

/// The response body: a short text or a log stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The node API's request handler, cloned per connection.
#[derive(Debug, Clone)]
pub struct Handler {
    pod_log_dir: PathBuf,
    cri: Option<CriClient>,
}

impl Handler {
    /// A handler serving the CRI log files under `pod_log_dir`.
    pub fn new(pod_log_dir: PathBuf) -> Self {
        Handler {
            pod_log_dir,
            cri: None,
        }
    }

    /// The same handler with the runtime to serve `exec`, `attach` and `portForward` from and
    /// to end a followed log when its container stops; without one those requests get a 501.
    pub fn with_runtime(mut self, cri: CriClient) -> Self {
        self.cri = Some(cri);
        self
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let streaming = matches!(segments.first(), Some(&("exec" | "attach" | "portForward")));
        let allowed = req.method() == Method::GET || (streaming && req.method() == Method::POST);
        if !allowed {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not served on {path}", req.method()),
            );
        }
        if streaming && self.cri.is_none() {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                format!("{path}: this agent has no container runtime"),
            );
        }
        match (segments.as_slice(), self.cri.as_ref()) {
            (["healthz"], _) => text(StatusCode::OK, "ok".into()),
            (["containerLogs", namespace, pod, container], _) => {
                self.logs(namespace, pod, container, req.uri().query())
            }
            (["exec", ns, pod, container], Some(cri)) => {
                remote::stream(cri, req, Session::Exec, (ns, pod, container)).await
            }
            (["attach", ns, pod, container], Some(cri)) => {
                remote::stream(cri, req, Session::Attach, (ns, pod, container)).await
            }
            (["portForward", ns, pod], Some(cri)) => remote::port_forward(cri, req, ns, pod).await,
            _ => text(StatusCode::NOT_FOUND, format!("no route for {path}")),
        }
    }

    fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        query: Option<&str>,
    ) -> Response<Body> {
        let opts = match LogOptions::parse(query, Timestamp::now()) {
            Ok(opts) => opts,
            Err(err) => return text(StatusCode::BAD_REQUEST, err.to_string()),
        };
        let found = ContainerLogs::find(&self.pod_log_dir, namespace, pod, container)
            .and_then(|logs| Ok((logs.pick(opts.previous, pod, container)?, logs)));
        let (restart, logs) = match found {
            Ok(found) => found,
            Err(err) => {
                let code = match err {
                    LogFileError::PodNotFound { .. } | LogFileError::ContainerNotFound { .. } => {
                        StatusCode::NOT_FOUND
                    }
                    LogFileError::NoPrevious { .. } => StatusCode::BAD_REQUEST,
                    LogFileError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return text(code, err.to_string());
            }
        };
        tracing::debug!(namespace, pod, container, restart, ?opts, "serving logs");
        let live = self.cri.clone().map(|cri| LiveRun {
            cri,
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        });
        let rx = stream::start(logs, restart, opts, live);
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
        });
        let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }
}

/// Serves one connection with `handler` (upgrades included) until it closes; with a `denied`
/// verdict, every request on it gets that answer instead.
pub async fn serve_connection<S>(io: S, handler: Handler, denied: Option<Denial>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (handler, denied) = (handler.clone(), denied.clone());
        async move {
            Ok::<_, Infallible>(match denied {
                Some(d) => text(d.code, d.message),
                None => handler.handle(req).await,
            })
        }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%err, "node API connection ended with an error");
    }
}

/// A plain-text answer, the node API's error format.
pub fn text(code: StatusCode, message: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(message)).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
