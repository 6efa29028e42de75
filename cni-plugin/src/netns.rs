//! Entering the container's network namespace just long enough to open netlink sockets there.
//!
//! A netlink socket stays bound to the namespace it was created in, so the plugin switches the
//! calling thread into the container namespace, opens its socket, and switches straight back.
//! Everything else (files, iptables, the host side of the veth) then runs in the node namespace.

use crate::cni_err;
use crate::error::Result;
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::ErrorKind;

/// Opens a network namespace file such as `/var/run/netns/x` or `/proc/<pid>/ns/net`.
///
/// A missing file is code 3 (container unknown), so DEL can treat it as "already gone".
pub fn open(path: &str) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => cni_err!(
            UnknownContainer,
            "container network namespace does not exist",
            "{path}: {e}"
        ),
        _ => cni_err!(
            IoFailure,
            "opening container network namespace",
            "{path}: {e}"
        ),
    })
}

/// Runs `f` with the calling thread in the namespace `target`, then returns to where it was.
///
/// Returning is not optional: if switching back fails the process is in an unknown namespace, so
/// that error wins over `f`'s result.
pub fn within<T>(target: &File, path: &str, f: impl FnOnce() -> T) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| cni_err!(IoFailure, "opening the current network namespace", "{e}"))?;
    setns(target, CloneFlags::CLONE_NEWNET).map_err(|e| {
        cni_err!(
            UnknownContainer,
            "entering container network namespace",
            "{path} is not a usable network namespace: {e}"
        )
    })?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET)
        .map_err(|e| cni_err!(Internal, "returning to the node network namespace", "{e}"))?;
    Ok(out)
}
