//! `state.json`: the processes `up` started (by role and PID, with a string their command line
//! must contain so a recycled PID is never killed) — what `down` stops.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One process of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// What it is (`apiserver`, `forwarder`, `containerd node-1`, `agent node-1`).
    pub role: String,
    /// Its PID.
    pub pid: u32,
    /// A string its `/proc/PID/cmdline` contains (a path under the cluster dir).
    pub marker: String,
    /// Its command line, so `restart` can start it again the same way (empty in states
    /// written before restarts existed).
    #[serde(default)]
    pub argv: Vec<String>,
    /// The file its output goes to, if `up` redirected it.
    #[serde(default)]
    pub log: Option<String>,
}

/// What `up` has started so far, in start order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Number of nodes requested.
    pub nodes: u8,
    /// Started processes.
    pub processes: Vec<Process>,
}

impl State {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state (after every started process, so a crash loses nothing).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Whether `pid` is alive and its command line still contains `marker`.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}
