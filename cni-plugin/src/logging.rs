//! Logging to a file: stdout belongs to the CNI protocol, and runtimes discard stderr.

use std::fs::OpenOptions;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// Sends `tracing` output to `path` (appending), filtered by `NETLET_CNI_LOG` (default `info`).
/// A log file that cannot be opened disables logging rather than failing the command.
pub fn init(path: &str) {
    let Ok(file) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    let filter =
        EnvFilter::try_from_env("NETLET_CNI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
}
