//! The crate's error type: each variant names the operation that failed and on what.

use crate::backend::BackendKind;
use std::process::ExitStatus;

/// Errors of the proxy library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel tool (iptables-restore, ip, …) could not be started or fed its input.
    #[error("{op}: running {program}: {source}")]
    Spawn {
        /// What we were doing, and on which object.
        op: String,
        /// The program we ran.
        program: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A kernel tool ran and reported failure.
    #[error("{op}: {program} failed ({status}): {stderr}")]
    Command {
        /// What we were doing, and on which object.
        op: String,
        /// The program we ran.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// `iptables -V` printed neither `nf_tables` nor `legacy`.
    #[error("detecting the iptables variant: unrecognised `iptables -V` output {0:?}")]
    UnknownIptablesVariant(String),
    /// The configured backend does not exist.
    #[error("unknown proxy backend {0:?} (expected iptables, nftables, ebpf or none)")]
    UnknownBackend(String),
    /// Talking nf_tables netlink failed (socket, send, receive, or a dump refused).
    #[error("{op}: netlink: {source}")]
    Netlink {
        /// What we were doing, and on which object.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a transaction; nothing of it was applied.
    #[error("{op}: the kernel refused {what}: {source}")]
    NetlinkRefused {
        /// The transaction.
        op: String,
        /// The first refused message.
        what: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The backend's network namespace could not be entered.
    #[error("entering network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The eBPF backend cannot serve a feature yet; names the service ports (or config) and
    /// the feature each needs.
    #[error("not supported by the eBPF datapath yet: {0}")]
    Unsupported(String),
    /// Loading, attaching or updating the eBPF datapath failed.
    #[error("eBPF backend: {op}: {source}")]
    Ebpf {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: Box<netlet_ebpf::Error>,
    },
    /// A backend's state file could not be written or removed.
    #[error("state file {}: {source}", path.display())]
    StateFile {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A health check node port could not be opened (usually: something else listens there).
    #[error("listening on health check node port {port} of service {service}: {source}")]
    HealthCheckListen {
        /// The port.
        port: u16,
        /// The Service it belongs to.
        service: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configured backend exists in the design but not in the code yet.
    #[error("proxy backend {0} is not implemented yet")]
    NotImplemented(BackendKind),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
