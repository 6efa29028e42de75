//! Deferred deletion of detached veths, off the runtime's critical path.
//!
//! Deleting a veth makes the kernel wait for RCU grace periods: ~20 ms per link here, most of a
//! DEL. What the runtime needs from DEL is that the IP is free and the container is off the
//! network; DEL does both synchronously (IPAM release, then the host end set down and removed from
//! the bridge in one fast message). The unregister itself is handed to a detached copy of this
//! binary (same node namespace, no stdio, own process group), so DEL returns in a few ms. The
//! kernel work is unchanged, only moved; if the runtime destroys the netns first, the pair
//! disappears with it and the reaper finds nothing to do. An ADD that meets a detached leftover
//! of its own attachment deletes it synchronously (see `commands::add`).

use crate::link::Netlink;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Environment variable that turns an exec of the binary into a reaper of one link.
pub const REAP_ENV: &str = "NETLET_CNI_REAP_LINK";

/// Starts the reaper for `link`; failures to spawn fall back to deleting inline.
pub async fn reap_later(host: &Netlink, link: &str) -> crate::error::Result<()> {
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .env_clear()
            .env(REAP_ENV, link)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(%e, "spawning reaper for {link}; deleting inline");
            host.delete_link(link).await.map(drop)
        }
    }
}

/// The reaper's whole job: delete `link` in the current namespace. Returns the exit code.
pub fn run(link: &str) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return 1,
    };
    rt.block_on(async {
        match Netlink::connect() {
            Ok(nl) => i32::from(nl.delete_link(link).await.is_err()),
            Err(_) => 1,
        }
    })
}
