//! `cargo xtask down`: stops every process of the cluster by PID (agents first, so nothing
//! recreates what is being removed), cleans up after each containerd, deletes the namespaces
//! and the cluster directory. Idempotent, and works after an `up` that crashed halfway: what
//! `state.json` missed is found by the cluster directory's path in command lines.

use std::time::Duration;

use anyhow::{bail, Result};
use integration::containerd::{processes_mentioning, ContainerdLayout};

use super::state::{is_ours, State};
use super::{cgroup_parent, cluster_dir, underlay, MAX_NODES};
use crate::util;

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// `cargo xtask down`.
pub fn down() -> Result<()> {
    util::require_root("cargo xtask down")?;
    let dir = cluster_dir();
    let state = State::load(&dir.join("state.json"))?;
    let mut stopped = 0;
    for p in state.processes.iter().rev() {
        if stop(p.pid, &p.marker) {
            println!("stopped {} (pid {})", p.role, p.pid);
            stopped += 1;
        }
    }
    // Containers and shims outlive containerd; each node's containerd dir says what is left.
    for k in 1..=MAX_NODES {
        let root = dir.join(format!("node-{k}")).join("containerd");
        let parent = cgroup_parent(k);
        let forced = ContainerdLayout::new(&root).force_cleanup(Some(&parent));
        if !forced.is_empty() {
            // Containers outlive containerd by design; what is left is cleaned up, not an error.
            println!(
                "node-{k}: cleaned up {} leftovers (runc containers, shims, mounts)",
                forced.len()
            );
        }
    }
    // Anything else still naming the cluster dir (started before state.json recorded it).
    let marker = dir.display().to_string();
    for pid in processes_mentioning(&marker) {
        if stop(pid, &marker) {
            println!("stopped leftover pid {pid}");
            stopped += 1;
        }
    }
    let failed = underlay::delete_all();
    if !failed.is_empty() {
        bail!("could not delete namespaces {}", failed.join(" "));
    }
    // The eBPF proxy keeps its bpffs mounted under each agent's state dir across restarts.
    for mount in mounts_under(&dir) {
        match nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => println!("unmounted {}", mount.display()),
            Err(e) => bail!("unmounting {}: {e}", mount.display()),
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    }
    println!("cluster down ({stopped} processes stopped)");
    Ok(())
}

/// Mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`).
fn mounts_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// SIGTERM, then SIGKILL after [`GRACE`], if `pid` is still ours; whether it was.
fn stop(pid: u32, marker: &str) -> bool {
    if !is_ours(pid, marker) {
        return false;
    }
    let pid_t = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGTERM);
    let gone = util::poll(GRACE, Duration::from_millis(50), || {
        (!is_ours(pid, marker)).then_some(())
    });
    if gone.is_none() {
        let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL);
    }
    true
}
