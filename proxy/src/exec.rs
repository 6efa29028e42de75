//! [`NetnsExec`]: where the kernel tools a backend runs take effect.
//!
//! Production programs the namespace the proxy runs in; tests hand the backend a throwaway
//! namespace so nothing touches the host's. Every command a backend runs goes through
//! [`NetnsExec::run`], so no backend can forget the namespace.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The network namespace commands run in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetnsExec {
    /// The proxy's own namespace (production).
    #[default]
    Current,
    /// A namespace `ip netns` knows by name (`ip netns exec NAME …`).
    Named(String),
    /// A namespace file, e.g. `/proc/PID/ns/net` (`nsenter --net=PATH …`).
    Path(PathBuf),
}

impl NetnsExec {
    /// The namespace file to enter, `None` for the current namespace.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Self::Current => None,
            Self::Named(name) => Some(PathBuf::from("/run/netns").join(name)),
            Self::Path(p) => Some(p.clone()),
        }
    }

    /// Runs `f` in this namespace: on a short-lived thread that enters it (the current thread
    /// for [`NetnsExec::Current`]). Sockets `f` opens keep operating on that namespace from
    /// any thread, which is how the netlink backends program a namespace they do not run in.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let Some(path) = self.path() else {
            return f();
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let netns_err = |source: std::io::Error| Error::Netns {
                    path: path.clone(),
                    source,
                };
                let file = std::fs::File::open(&path).map_err(netns_err)?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| netns_err(e.into()))?;
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    /// A command running `program` in this namespace.
    pub fn command(&self, program: &str) -> Command {
        match self {
            Self::Current => Command::new(program),
            Self::Named(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, program]);
                c
            }
            Self::Path(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg(program);
                c
            }
        }
    }

    /// Runs `program args` with `stdin` as input; returns stdout, or an error naming `op`.
    pub fn run(
        &self,
        op: &str,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String> {
        let spawn_err = |source| Error::Spawn {
            op: op.to_string(),
            program: program.to_string(),
            source,
        };
        let mut child = self
            .command(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // A tool that exits early closes the pipe; its exit status then tells why.
            let written = pipe.write_all(input.as_bytes());
            drop(pipe);
            if let Err(e) = written {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    let _ = child.wait();
                    return Err(spawn_err(e));
                }
            }
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(Error::Command {
                op: op.to_string(),
                program: program.to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
