//! Killing and starting again one process of a running cluster by its role (`agent node-2`):
//! what the e2e suite uses to crash an agent (kill -9) and bring it back with the command line
//! and log `up` recorded, the way a supervisor would restart it.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::state::{is_ours, State};
use super::{cluster_dir, up};
use crate::util;

/// SIGKILLs the running process with `role` and waits until it is gone; returns its PID.
pub fn kill(role: &str) -> Result<u32> {
    let state = State::load(&cluster_dir().join("state.json"))?;
    let p = state
        .processes
        .iter()
        .find(|p| p.role == role && is_ours(p.pid, &p.marker))
        .with_context(|| format!("no running cluster process {role}"))?;
    let pid = nix::unistd::Pid::from_raw(p.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
        .with_context(|| format!("killing {role} (pid {})", p.pid))?;
    util::poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (!is_ours(p.pid, &p.marker)).then_some(())
    })
    .with_context(|| format!("{role} (pid {}) still alive after SIGKILL", p.pid))?;
    Ok(p.pid)
}

/// Starts the process with `role` again, as `up` started it, and records its new PID.
pub fn start_again(role: &str) -> Result<u32> {
    let path = cluster_dir().join("state.json");
    let mut state = State::load(&path)?;
    let Some(i) = state.processes.iter().position(|p| p.role == role) else {
        bail!("the cluster has no process {role}");
    };
    let p = state.processes[i].clone();
    if is_ours(p.pid, &p.marker) {
        bail!("{role} is still running (pid {})", p.pid);
    }
    let Some((program, args)) = p.argv.split_first() else {
        bail!("{role} has no recorded command line (started by an older `up`)");
    };
    let mut cmd = Command::new(program);
    cmd.args(args).process_group(0);
    if let Some(log) = &p.log {
        up::redirect(&mut cmd, log.as_ref())?;
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {role} again: `{}`", util::display(&cmd)))?;
    let pid = child.id();
    // Not waited for, like every process `up` starts: it outlives this call.
    std::mem::forget(child);
    state.processes[i].pid = pid;
    state.save(&path)?;
    Ok(pid)
}
