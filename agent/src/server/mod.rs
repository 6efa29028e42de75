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
//! - [`handler`]: the HTTP routes.
//! - [`unix`]: serving on a 0600 unix socket, the path the apiserver uses.
//!
//! How the apiserver finds the node API: the agent writes the socket path into the Node's
//! [`SOCKET_ANNOTATION`]; the apiserver connects to that socket. A unix socket lives in the
//! file system, so it is reachable from the host namespace even when the agent runs in a node
//! network namespace the apiserver cannot route to (`cargo xtask up`). It is created mode 0600:
//! only root can connect, which is the authentication. HTTPS on `InternalIP:10250` (with client
//! certificates of the cluster CA) is not served yet; the Node still advertises port 10250.

pub mod cri_log;
pub mod handler;
pub mod log_files;
pub mod options;
pub mod remote;
pub mod stream;
pub mod unix;
pub mod upgrade;

/// The Node annotation naming the node API's unix socket (an absolute path).
pub const SOCKET_ANNOTATION: &str = "netlet.dev/kubelet-socket";

/// The socket's file name in the agent's state directory.
pub const SOCKET_FILE: &str = "kubelet.sock";
