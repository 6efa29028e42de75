//! Reaching a node's agent: its agent serves the node API on a unix socket and names it in the
//! Node annotation [`SOCKET_ANNOTATION`]. A socket file is reachable across network namespaces
//! (the `cargo xtask up` nodes live in namespaces the apiserver cannot route to) and its 0600
//! mode is the authentication. Nodes without the annotation (HTTPS to `InternalIP:10250`) are
//! not supported yet and get a 500 saying so.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;

use super::error::ApiError;
use super::path::Target;
use super::read::get_object;
use super::resources::find;
use crate::storage::Storage;

/// The Node annotation naming the agent's node API socket (an absolute path).
pub const SOCKET_ANNOTATION: &str = "netlet.dev/kubelet-socket";

/// The node API socket of `node`, from its annotation.
pub async fn node_socket(storage: &dyn Storage, node: &str) -> Result<String, ApiError> {
    let nodes = find("", "v1", "nodes").expect("nodes are in the resource table");
    let t = Target {
        resource: nodes,
        namespace: None,
        name: Some(node.to_string()),
        subresource: None,
        watch_path: false,
    };
    let (_, obj) = get_object(storage, &t, node).await?;
    obj["metadata"]["annotations"][SOCKET_ANNOTATION]
        .as_str()
        .filter(|s| s.starts_with('/'))
        .map(str::to_string)
        .ok_or_else(|| ApiError::NodeUnreachable {
            node: node.to_string(),
            reason: format!(
                "the Node has no {SOCKET_ANNOTATION} annotation (HTTPS to the node address is not \
                 supported)"
            ),
        })
}

/// The error for a node API that could not be reached or talked to.
pub fn unreachable(node: &str, socket: &str, reason: String) -> ApiError {
    ApiError::NodeUnreachable {
        node: node.to_string(),
        reason: format!("{socket}: {reason}"),
    }
}

/// An HTTP/1.1 connection to the node API on `socket`, able to switch protocols (for `exec`,
/// `attach` and `portforward`).
pub async fn connect(node: &str, socket: &str) -> Result<SendRequest<Empty<Bytes>>, ApiError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(node, socket, format!("connecting: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(node, socket, format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "node API connection ended with an error");
        }
    });
    Ok(sender)
}

/// The `Status` error for an agent's error answer, carrying its plain-text message.
pub async fn refused(node: &str, status: StatusCode, body: Incoming) -> ApiError {
    let message = body
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    // containerd refuses a websocket protocol it does not speak with an empty 4xx, which
    // kubectl answers by retrying with SPDY; an empty message would tell a reader nothing.
    let message = if message.is_empty() {
        format!("the node API answered {status} without a message")
    } else {
        message
    };
    ApiError::NodeRefused {
        node: node.to_string(),
        code: status.as_u16(),
        message,
    }
}
