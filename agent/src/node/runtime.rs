//! Whether the container runtime is up, asked over CRI the way the kubelet's runtime health
//! check does: `Version` for the Node's `containerRuntimeVersion`, `Status` for readiness.
//!
//! The connection is made lazily and dropped on any error, so an agent started before
//! containerd (or across a containerd restart) reconnects on its next check instead of
//! failing.

use crate::cri::{unready_conditions, CriClient};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// Deadline of one health-check call: a runtime that cannot answer `Status` this fast is not
/// ready for pods either.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    /// `<runtimeName>://<runtimeVersion>`, e.g. `containerd://1.6.20`, once known.
    pub version: Option<String>,
    /// Why the runtime is not ready; `None` when `RuntimeReady` and `NetworkReady` both hold.
    pub problem: Option<String>,
}

/// Checks one CRI endpoint, reconnecting as needed.
#[derive(Debug)]
pub struct RuntimeProbe {
    socket: PathBuf,
    client: Mutex<Option<CriClient>>,
}

impl RuntimeProbe {
    /// A probe for the runtime on `socket`; nothing is connected yet.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            client: Mutex::new(None),
        }
    }

    /// Asks the runtime for its version and conditions.
    pub async fn check(&self) -> RuntimeState {
        let mut slot = self.client.lock().await;
        if slot.is_none() {
            match CriClient::connect(&self.socket).await {
                Ok(c) => *slot = Some(c.with_timeout(CHECK_TIMEOUT)),
                Err(e) => {
                    return RuntimeState {
                        version: None,
                        problem: Some(format!("container runtime is down: {e}")),
                    }
                }
            }
        }
        let client = slot.as_ref().expect("connected above");
        let version = match client.version().await {
            Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
            Err(e) => {
                *slot = None;
                return RuntimeState {
                    version: None,
                    problem: Some(format!("container runtime is down: {e}")),
                };
            }
        };
        let problem = match client.status().await {
            Ok(status) => {
                let unready = unready_conditions(&status);
                (!unready.is_empty())
                    .then(|| format!("container runtime not ready: {}", unready.join("; ")))
            }
            Err(e) => {
                *slot = None;
                Some(format!("container runtime status check failed: {e}"))
            }
        };
        RuntimeState {
            version: Some(version),
            problem,
        }
    }
}
