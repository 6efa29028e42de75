//! The node API on a unix socket in the agent's state directory.
//!
//! A socket file is reachable from every network namespace that sees the file system, which is
//! how the apiserver reaches agents that run in their own node namespaces (`cargo xtask up`).
//! The socket is the authenticated path: it is created mode 0600, so only root (the apiserver
//! runs as root on such a host) can connect.

use super::handler::{self, Handler};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Creating, binding or restricting the socket failed.
    #[error("{op} the node API socket {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds `path` (replacing a stale socket from an earlier run) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |op| {
        move |source| SocketError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing the stale")(err))
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting"))?;
    Ok(listener)
}

/// Serves `handler` on `listener` until `cancel` fires; each connection runs on its own task.
pub async fn serve(listener: UnixListener, handler: Handler, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "accepting a node API connection");
                    continue;
                }
            },
        };
        tokio::spawn(handler::serve_connection(stream, handler.clone(), None));
    }
}
