//! The `pods/exec`, `pods/attach` and `pods/portforward` subresources: the client's upgrade
//! request (SPDY, or websocket) is handed to the agent of the pod's node, which hands it to the
//! runtime's streaming server; once the far end switches protocols the apiserver relays bytes
//! both ways.
//!
//! The apiserver does not speak the stream protocols itself: what the client and the runtime
//! agree on works (kubectl's SPDY; websocket `v4.channel.k8s.io` of client libraries). kubectl
//! 1.30 and later first ask for websocket `v5.channel.k8s.io`, which containerd refuses, and
//! then retry with SPDY, as they do against any apiserver that cannot translate.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::error::ApiError;
use super::http::Body;
use super::node_api::{self, NodeDialer};
use super::path::{Subresource, Target};
use super::pod_logs::{pick_container, split_query};
use super::read::get_object;
use crate::storage::Storage;

/// Serves an `exec`, `attach` or `portforward` request for pod `name`.
pub async fn serve<B>(
    storage: &dyn Storage,
    dialer: &NodeDialer,
    t: &Target,
    name: &str,
    mut req: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let (_, pod) = get_object(storage, t, name).await?;
    let namespace = t.namespace.as_deref().unwrap_or("default");
    let (container, forwarded) = split_query(req.uri().query());
    let verb = match t.subresource {
        Some(Subresource::Exec) => "exec",
        Some(Subresource::Attach) => "attach",
        _ => "portForward",
    };
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        let action = if verb == "portForward" {
            "forward ports to"
        } else {
            verb
        };
        return Err(ApiError::BadRequest(format!(
            "cannot {action} a container in a completed pod; current phase is {phase}"
        )));
    }
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let uri = if verb == "portForward" {
        format!("/portForward/{namespace}/{name}?{forwarded}")
    } else {
        let container = pick_container(&pod, name, container)?;
        format!("/{verb}/{namespace}/{name}/{container}?{forwarded}")
    };
    let endpoint = node_api::node_endpoint(storage, node).await?;
    let mut sender = dialer.connect(node, &endpoint).await?;
    let mut to_agent = Request::builder().method(req.method().clone()).uri(&uri);
    for (header, value) in req.headers() {
        // The agent trusts the apiserver, not the client's credentials; the request goes on
        // without a body, so its framing headers must not promise one.
        let dropped = [HOST, AUTHORIZATION, CONTENT_LENGTH, TRANSFER_ENCODING];
        if !dropped.contains(header) {
            to_agent = to_agent.header(header, value);
        }
    }
    let to_agent = to_agent
        .header(HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| node_api::unreachable(node, &endpoint, format!("building {uri}: {e}")))?;
    let resp = sender
        .send_request(to_agent)
        .await
        .map_err(|e| node_api::unreachable(node, &endpoint, format!("{verb} {uri}: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Err(node_api::refused(node, parts.status, body).await);
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (header, value) in resp.headers() {
        answer = answer.header(header, value);
    }
    let client_side = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (client, agent) = match tokio::join!(client_side, hyper::upgrade::on(resp)) {
            (Ok(client), Ok(agent)) => (client, agent),
            (Err(err), _) | (_, Err(err)) => {
                tracing::debug!(%err, "a pod stream did not switch protocols");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
            tracing::debug!(%err, "a pod stream ended with an error");
        }
    });
    Ok(answer
        .body(Empty::new().boxed_unsync())
        .expect("copied headers make a valid response"))
}
