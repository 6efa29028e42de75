//! The agent's node API (the part of kubelet's port 10250 API that `kubectl logs`, `exec`,
//! `attach` and `port-forward` need): container logs read from the CRI log files, streaming
//! sessions relayed to the runtime's streaming server, and a health check.
//!
//! # Layout
//! - [`cri_log`]: decoding the CRI log format, joining partial lines.
//! - [`options`]: the request's `PodLogOptions` and the tail/since/limit selection.
//! - [`log_files`]: finding a container's log file for the current or previous run.
//! - [`stream`]: reading (and following) one log file into a response body.
//! - [`remote`]: `exec`, `attach` and `portForward`: the container or sandbox and its URL.
//! - [`upgrade`]: relaying an upgraded connection to the runtime's streaming server.
//! - [`handler`]: the HTTP routes, and serving one connection.
//! - [`tls`]: the self-signed serving certificate and the client-certificate check.
//! - [`https`]: serving on `node IP:10250`, with authentication and authorisation.
//! - [`unix`]: serving on a 0600 unix socket instead, named by [`SOCKET_ANNOTATION`].
//!
//! How the apiserver finds the node API: as kube-apiserver finds kubelet, at the Node's
//! InternalIP and `status.daemonEndpoints.kubeletEndpoint.Port`, over HTTPS with its kubelet
//! client certificate. An agent started with `--node-api-socket` also serves a unix socket and
//! names it in the Node's [`SOCKET_ANNOTATION`]; the apiserver then uses that, for hosts where
//! it shares the file system with the agent but cannot route to it.

pub mod cri_log;
pub mod handler;
pub mod https;
pub mod log_files;
pub mod options;
pub mod remote;
pub mod stream;
pub mod tls;
pub mod unix;
pub mod upgrade;

/// The Node annotation naming the node API's unix socket (an absolute path).
pub const SOCKET_ANNOTATION: &str = "netlet.dev/kubelet-socket";

/// The socket's file name in the agent's state directory.
pub const SOCKET_FILE: &str = "kubelet.sock";
