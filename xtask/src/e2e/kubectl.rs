//! Stock `kubectl` against the e2e cluster: apply JSON manifests, read objects as JSON and
//! wait for conditions, with errors that say which object and what was last seen.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util;

/// `kubectl --kubeconfig <cluster>`.
pub struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// A kubectl for the cluster whose admin kubeconfig is `kubeconfig`.
    pub fn new(kubeconfig: PathBuf) -> Self {
        Self { kubeconfig }
    }

    /// `kubectl --kubeconfig <cluster> args…`, not started yet (for long-running commands).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// Runs `kubectl args…` and returns stdout, failing with stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `kubectl args…` with `input` on stdin and returns how it ended, whatever the exit
    /// status (`kubectl exec` passes the command's on).
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Result<std::process::Output> {
        let what = || format!("running kubectl {}", args.join(" "));
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(what)?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())
            .with_context(what)?;
        child.wait_with_output().with_context(what)
    }

    /// `kubectl apply -f -` with `manifest` on stdin.
    pub fn apply(&self, manifest: &Value) -> Result<()> {
        let out = self.run_with_input(&["apply", "-f", "-"], &manifest.to_string())?;
        if !out.status.success() {
            bail!(
                "kubectl apply of {} {} failed: {}",
                manifest["kind"].as_str().unwrap_or("?"),
                manifest["metadata"]["name"].as_str().unwrap_or("?"),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `kubectl get args… -o json`, parsed.
    pub fn get(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).with_context(|| format!("parsing kubectl {}", all.join(" ")))
    }

    /// Polls `kubectl get args… -o json` until `check` returns `Some`, for at most `timeout`;
    /// the error names `what` and shows the last object seen.
    pub fn wait_for<T>(
        &self,
        what: &str,
        args: &[&str],
        timeout: Duration,
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> Result<T> {
        let mut last = Value::Null;
        let found = util::poll(timeout, Duration::from_millis(500), || {
            let v = self.get(args).ok()?;
            let r = check(&v);
            last = v;
            r
        });
        found.with_context(|| {
            format!(
                "timed out after {} s waiting for {what}; last seen:\n{}",
                timeout.as_secs(),
                summarize(&last)
            )
        })
    }
}

/// A short view of an object or list for error messages (names, phases, conditions).
fn summarize(v: &Value) -> String {
    let items: Vec<&Value> = match v["items"].as_array() {
        Some(items) => items.iter().collect(),
        None => vec![v],
    };
    items
        .iter()
        .map(|o| {
            format!(
                "{} node={} phase={} podIP={} conditions={} containers={}",
                o["metadata"]["name"].as_str().unwrap_or("?"),
                o["spec"]["nodeName"].as_str().unwrap_or("-"),
                o["status"]["phase"].as_str().unwrap_or("-"),
                o["status"]["podIP"].as_str().unwrap_or("-"),
                o["status"]["conditions"],
                o["status"]["containerStatuses"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
