//! Invokes a CNI plugin the way a container runtime does: one process per operation, the
//! parameters in `CNI_*` environment variables, the network configuration on stdin, the
//! result (or a spec error) on stdout — and, for a node that is itself a namespace, the
//! process started inside that node's network namespace.
//!
//! The node namespace is entered with `setns` in the forked child just before `exec`, not with
//! `ip netns exec`: that wrapper costs milliseconds per call, which would swamp the plugin
//! latencies the CNI bench measures. The xtask process itself never leaves the host namespace.

// The pre-exec hook below is the one place xtask needs unsafe code.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How a runtime on one node runs one plugin: which binary, in which namespace, with which
/// `CNI_PATH` for delegated (IPAM) plugins.
#[derive(Debug)]
pub struct Runtime {
    /// The plugin binary.
    plugin: PathBuf,
    /// The node's network namespace file, kept open so each invocation only needs `setns`.
    node_ns: Option<File>,
    /// `CNI_PATH`: where the plugin finds delegated plugins.
    cni_path: String,
}

/// One attachment of a container to the network: the `CNI_CONTAINERID`, `CNI_NETNS` and
/// `CNI_IFNAME` of a call.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`: the container's namespace file.
    pub netns: &'a Path,
    /// `CNI_IFNAME`: the interface name inside the container.
    pub ifname: &'a str,
}

/// What one plugin invocation took and produced.
#[derive(Debug)]
pub struct Invocation {
    /// Wall time from spawn to exit (stdin written, stdout and stderr drained).
    pub elapsed: Duration,
    /// The plugin's exit status, stdout and stderr.
    pub output: Output,
}

impl Runtime {
    /// A runtime for `plugin`, started inside the namespace at `node_ns` (a
    /// `/var/run/netns/<name>` file) or, with `None`, in the caller's own namespace.
    pub fn new(plugin: &Path, node_ns: Option<&Path>, cni_path: String) -> Result<Self> {
        let node_ns = node_ns
            .map(|p| File::open(p).with_context(|| format!("opening {}", p.display())))
            .transpose()?;
        Ok(Self {
            plugin: plugin.to_path_buf(),
            node_ns,
            cni_path,
        })
    }

    /// Runs `CNI_COMMAND=command` for `att` with `config` on stdin; any exit status is returned.
    pub fn invoke(&self, command: &str, att: Attachment<'_>, config: &Value) -> Result<Invocation> {
        let stdin = serde_json::to_vec(config).context("serialising the network config")?;
        let mut cmd = Command::new(&self.plugin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", att.container_id)
            .env("CNI_NETNS", att.netns)
            .env("CNI_IFNAME", att.ifname)
            .env("CNI_PATH", &self.cni_path)
            .env_remove("CNI_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &self.node_ns {
            let fd = ns.as_raw_fd();
            // SAFETY: the hook runs in the forked child before exec, where only
            // async-signal-safe work is allowed; it makes one raw syscall (setns) and builds
            // an io::Error from errno, neither of which allocates or takes locks. `fd` stays
            // open in the child: the parent holds the File for as long as `self` lives, and
            // O_CLOEXEC only closes it at the exec that follows.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }

        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.plugin.display()))?;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A plugin may exit without reading stdin (e.g. on a bad env); that is its error to
        // report, so a broken pipe here is not ours.
        let _ = pipe.write_all(&stdin);
        drop(pipe);
        let output = child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", self.plugin.display()))?;
        Ok(Invocation {
            elapsed: start.elapsed(),
            output,
        })
    }

    /// Like [`Runtime::invoke`], but fails unless the plugin exits 0, with its output in the
    /// error; returns the time taken and the parsed stdout (`Value::Null` when empty, as DEL's
    /// is).
    pub fn call(
        &self,
        command: &str,
        att: Attachment<'_>,
        config: &Value,
    ) -> Result<(Duration, Value)> {
        let inv = self.invoke(command, att, config)?;
        let out = &inv.output;
        if !out.status.success() {
            bail!(
                "{} {command} for container {} failed ({})\n  stdout: {}\n  stderr: {}",
                self.plugin.display(),
                att.container_id,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).with_context(|| {
                format!(
                    "{} {command} for container {} printed invalid JSON: {stdout}",
                    self.plugin.display(),
                    att.container_id
                )
            })?
        };
        Ok((inv.elapsed, value))
    }
}

/// `config` with `prevResult` set to `result`, as CNI 1.0+ requires for CHECK and DEL.
pub fn with_prev_result(config: &Value, result: &Value) -> Value {
    let mut c = config.clone();
    if let Value::Object(map) = &mut c {
        map.insert("prevResult".to_owned(), result.clone());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prev_result_is_added_without_touching_the_rest() {
        let config = serde_json::json!({"cniVersion": "1.0.0", "type": "bridge"});
        let result = serde_json::json!({"ips": [{"address": "10.0.0.2/24"}]});
        let c = with_prev_result(&config, &result);
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["prevResult"], result);
        assert!(config.get("prevResult").is_none());
    }
}
