//! A `netlet-control-plane serve` of the benchmark's own: a temp data dir, 127.0.0.1 port 0,
//! killed by PID when dropped; the benches reach it through [`Api`] with the admin certificate.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::Method;
use integration::ChildGuard;

use super::api_client::Api;
use crate::{interrupt, util};

/// How long the server may take to write its kubeconfig and then to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `netlet-control-plane serve` in a temp dir, killed by PID on drop.
pub struct Server {
    /// The server process (dropped before the dir, as fields drop in order).
    pub guard: ChildGuard,
    /// Its data dir (kubeconfig, PKI, embedded storage, log).
    dir: tempfile::TempDir,
    /// How to reach it.
    pub api: Api,
}

impl Server {
    /// Starts `bin serve` with `extra` flags and waits for `/readyz`.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nlt-bench-apiserver-")
            .tempdir()
            .context("creating a temp dir")?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let guard = ChildGuard::new(child);
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let text = util::poll(START_TIMEOUT, Duration::from_millis(50), || {
            std::fs::read_to_string(&kubeconfig).ok()
        })
        .with_context(|| format!("no admin.kubeconfig after 30 s; {}", log_tail(dir.path())))?;
        interrupt::check()?;
        let api = Api::from_kubeconfig(&text)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        util::poll(START_TIMEOUT, Duration::from_millis(50), || {
            let ready = runtime.block_on(async {
                let mut conn = api.connect().await?;
                conn.call(Method::GET, "/readyz", "text/plain", None).await
            });
            ready.ok().map(|_| ())
        })
        .with_context(|| format!("/readyz not ready after 30 s; {}", log_tail(dir.path())))?;
        Ok(Self { guard, dir, api })
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }
}

/// The last lines of the server log in `dir`.
fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "server log:\n{}",
        lines[lines.len().saturating_sub(10)..].join("\n")
    )
}
