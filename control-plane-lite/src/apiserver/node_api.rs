//! Reaching a node's agent, as kube-apiserver reaches kubelet: HTTPS to the Node's address
//! (InternalIP, then ExternalIP, then Hostname) on the port in `status.daemonEndpoints`
//! (10250 by default), authenticated with the apiserver's kubelet client certificate
//! (`node_tls.rs`).
//!
//! A Node may instead name a unix socket in the [`SOCKET_ANNOTATION`]: for an agent the
//! apiserver shares a file system with but cannot route to. The socket's 0600 mode is then the
//! authentication.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::error::ApiError;
use super::node_tls;
use super::read::get_core;
use super::tls::{Pki, TlsError};
use crate::storage::Storage;

/// The Node annotation naming the agent's node API socket (an absolute path).
pub const SOCKET_ANNOTATION: &str = "netlet.dev/kubelet-socket";

/// kubelet's port, for Nodes that do not say theirs.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// How long connecting (TCP and TLS) to an agent may take before the request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node's agent serves its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEndpoint {
    /// A unix socket path, from the Node's annotation.
    Socket(String),
    /// HTTPS at the Node's address.
    Https {
        /// An IP address or host name.
        host: String,
        /// The kubelet port.
        port: u16,
    },
}

impl fmt::Display for NodeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeEndpoint::Socket(path) => f.write_str(path),
            NodeEndpoint::Https { host, port } if host.contains(':') => {
                write!(f, "https://[{host}]:{port}")
            }
            NodeEndpoint::Https { host, port } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// Where `node` (a stored Node object) serves its API, or why it cannot be reached.
fn endpoint_of(name: &str, node: &Value) -> Result<NodeEndpoint, ApiError> {
    if let Some(socket) = node["metadata"]["annotations"][SOCKET_ANNOTATION].as_str() {
        if socket.starts_with('/') {
            return Ok(NodeEndpoint::Socket(socket.to_string()));
        }
    }
    let addresses = node["status"]["addresses"].as_array();
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses?
                .iter()
                .find(|a| a["type"] == *kind)
                .and_then(|a| a["address"].as_str())
                .filter(|a| !a.is_empty())
        })
        .ok_or_else(|| ApiError::NodeUnreachable {
            node: name.to_string(),
            reason: "the Node reports no InternalIP, ExternalIP or Hostname address".to_string(),
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok(NodeEndpoint::Https {
        host: host.to_string(),
        port,
    })
}

/// Where the agent of `node` serves its API.
pub async fn node_endpoint(storage: &dyn Storage, node: &str) -> Result<NodeEndpoint, ApiError> {
    let obj = get_core(storage, "nodes", None, node).await?;
    endpoint_of(node, &obj)
}

/// The error for a node API that could not be reached or talked to.
pub fn unreachable(node: &str, endpoint: &NodeEndpoint, reason: String) -> ApiError {
    ApiError::NodeUnreachable {
        node: node.to_string(),
        reason: format!("{endpoint}: {reason}"),
    }
}

/// Opens connections to node agents; one per apiserver, shared by its requests.
#[derive(Clone)]
pub struct NodeDialer {
    tls: TlsConnector,
}

impl NodeDialer {
    /// A dialer presenting the kubelet client certificate of `pki`.
    pub fn new(pki: &Pki) -> Result<Self, TlsError> {
        let config = node_tls::client_config(pki)?;
        Ok(NodeDialer {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// An HTTP/1.1 connection to the node API at `endpoint`, able to switch protocols (for
    /// `exec`, `attach` and `portforward`).
    pub async fn connect(
        &self,
        node: &str,
        endpoint: &NodeEndpoint,
    ) -> Result<SendRequest<Empty<Bytes>>, ApiError> {
        let failed =
            |what: &str, e: &dyn fmt::Display| unreachable(node, endpoint, format!("{what}: {e}"));
        match endpoint {
            NodeEndpoint::Socket(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| failed("connecting", &e))?;
                handshake(node, endpoint, stream).await
            }
            NodeEndpoint::Https { host, port } => {
                let connecting = async {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| failed("connecting", &e))?;
                    let name = ServerName::try_from(host.clone())
                        .map_err(|e| failed("the node address as a TLS name", &e))?;
                    self.tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| failed("TLS handshake", &e))
                };
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                    .await
                    .map_err(|_| {
                        unreachable(
                            node,
                            endpoint,
                            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                        )
                    })??;
                handshake(node, endpoint, stream).await
            }
        }
    }
}

/// The HTTP/1.1 client handshake on an open connection; the connection is driven on its own
/// task, with upgrades.
async fn handshake<S>(
    node: &str,
    endpoint: &NodeEndpoint,
    stream: S,
) -> Result<SendRequest<Empty<Bytes>>, ApiError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(node, endpoint, format!("HTTP handshake: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_is_reached_at_its_preferred_address_and_kubelet_port() {
        let node = json!({"status": {
            "addresses": [
                {"type": "Hostname", "address": "node-1"},
                {"type": "ExternalIP", "address": "192.0.2.7"},
                {"type": "InternalIP", "address": "10.200.0.11"}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10255}}
        }});
        let ep = endpoint_of("node-1", &node).unwrap();
        assert_eq!(ep.to_string(), "https://10.200.0.11:10255");

        let hostname_only =
            json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}]}});
        let ep = endpoint_of("n", &hostname_only).unwrap();
        assert_eq!(
            ep.to_string(),
            "https://n:10250",
            "no daemonEndpoints: kubelet's port"
        );

        let v6 = json!({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::1"}]}});
        assert_eq!(
            endpoint_of("n", &v6).unwrap().to_string(),
            "https://[fd00::1]:10250"
        );
    }

    #[test]
    fn a_socket_annotation_wins_and_a_node_without_addresses_is_unreachable() {
        let node = json!({
            "metadata": {"annotations": {SOCKET_ANNOTATION: "/run/a.sock"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
        });
        assert_eq!(
            endpoint_of("n", &node).unwrap(),
            NodeEndpoint::Socket("/run/a.sock".into())
        );
        let relative = json!({"metadata": {"annotations": {SOCKET_ANNOTATION: "a.sock"}}});
        let err = endpoint_of("n", &relative).unwrap_err().to_string();
        assert!(
            err.contains("no InternalIP, ExternalIP or Hostname"),
            "{err}"
        );
    }
}
