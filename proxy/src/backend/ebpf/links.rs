//! Keeping the datapath attached to every pod veth, also those created after the proxy started.
//!
//! Pods come and go between syncs, and a pod that is only a client never causes one, so waiting
//! for the next sync would leave a new pod without service translation. A thread in the
//! backend's namespace therefore listens for rtnetlink link notifications (`RTMGRP_LINK`) and
//! attaches to each new matching interface as soon as it appears. A notification only triggers
//! a rescan (`if_nameindex`), so lost notifications (a full socket buffer) cost nothing but
//! the next event's rescan, and a sync rescans too.
//!
//! Interfaces are tracked by name *and* ifindex: a veth deleted and recreated under the same
//! name (a recreated pod sandbox) is a new device without our filters and is attached again.

use super::ebpf_err;
use crate::error::{Error, Result};
use netlet_ebpf::ServiceNat;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// `RTMGRP_LINK`: the rtnetlink multicast group of link (interface) changes.
const RTMGRP_LINK: u32 = 1;
/// How long the watch blocks in `recv` before checking whether it should stop (the latency of
/// dropping the backend, not of attaching).
const STOP_POLL: nix::sys::time::TimeVal = nix::sys::time::TimeVal::new(0, 100_000);

/// The loaded datapath and where it is attached, shared by syncs and the link watch.
#[derive(Debug)]
pub struct Datapath {
    /// Programs and maps.
    pub nat: ServiceNat,
    /// Interfaces attached by this process: name -> ifindex.
    attached: BTreeMap<String, u32>,
}

/// The shared handle.
pub type Shared = Arc<Mutex<Datapath>>;

impl Datapath {
    /// Wraps a freshly loaded datapath, attached nowhere yet by this process.
    pub fn new(nat: ServiceNat) -> Shared {
        Arc::new(Mutex::new(Self {
            nat,
            attached: BTreeMap::new(),
        }))
    }
}

/// Locks `shared`; a panic while holding the lock (a bug) does not make the datapath unusable.
pub fn lock(shared: &Shared) -> MutexGuard<'_, Datapath> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `name` matches one of `patterns` (`prefix*` or an exact name).
pub fn matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == p,
    })
}

/// Attaches to every interface of the calling thread's namespace that matches `patterns` and
/// is not attached by this process yet; returns how many. Tries every interface and reports
/// the first failure (an interface may vanish between the listing and the attach).
pub fn attach_new(dp: &mut Datapath, patterns: &[String]) -> Result<usize> {
    let present: BTreeMap<String, u32> = nix::net::if_::if_nameindex()
        .map_err(|e| Error::Netlink {
            op: "listing interfaces for the eBPF backend".into(),
            source: e.into(),
        })?
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .filter(|(name, _)| matches(patterns, name))
        .collect();
    dp.attached
        .retain(|name, index| present.get(name) == Some(index));
    let mut count = 0;
    let mut first_err = None;
    for (name, index) in present {
        if dp.attached.get(&name) == Some(&index) {
            continue;
        }
        match dp.nat.attach(&name) {
            Ok(()) => {
                tracing::info!(ifname = %name, "service NAT attached");
                dp.attached.insert(name, index);
                count += 1;
            }
            Err(e) => {
                let e = ebpf_err(&format!("attaching to {name}"), e);
                tracing::warn!(error = %e, "attaching service NAT");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

/// The running link watch; stops (and is joined) on drop.
#[derive(Debug)]
pub struct LinkWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatch {
    /// Starts watching the namespace at `netns` (the current one when `None`) and attaching
    /// `dp` to new interfaces matching `patterns`. Returns once the watch is subscribed and has
    /// done its first scan, so no interface created after this returns is missed.
    pub fn start(netns: Option<PathBuf>, patterns: Vec<String>, dp: Shared) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let stop_thread = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebpf-link-watch".into())
            .spawn(move || {
                let sock = match subscribe(netns.as_deref()) {
                    Ok(sock) => sock,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Errors of single interfaces are logged by attach_new; keep watching.
                let _ = attach_new(&mut lock(&dp), &patterns);
                let _ = ready_tx.send(Ok(()));
                watch(&sock, &stop_thread, &patterns, &dp);
            })
            .map_err(|source| Error::Netlink {
                op: "starting the eBPF link watch thread".into(),
                source,
            })?;
        let watch = Self {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(watch),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Netlink {
                op: "starting the eBPF link watch".into(),
                source: std::io::Error::other("the watch thread ended before subscribing"),
            }),
        }
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters `netns` (this thread for good) and subscribes to link notifications there.
fn subscribe(netns: Option<&std::path::Path>) -> Result<netlink_sys::Socket> {
    if let Some(path) = netns {
        let netns_err = |source| Error::Netns {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(netns_err)?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| netns_err(e.into()))?;
    }
    let op = "subscribing to link notifications for the eBPF backend";
    let io = |source| Error::Netlink {
        op: op.into(),
        source,
    };
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).map_err(io)?;
    sock.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK))
        .map_err(io)?;
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(&sock, sockopt::ReceiveTimeout, &STOP_POLL)
        .map_err(|e| io(std::io::Error::from(e)))?;
    Ok(sock)
}

/// Rescans on every notification until `stop` is set.
fn watch(sock: &netlink_sys::Socket, stop: &AtomicBool, patterns: &[String], dp: &Shared) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ENOBUFS: notifications were lost; the rescan below covers them.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {}
            Err(e) => {
                tracing::warn!(error = %e, "eBPF link watch: receiving; rescanning");
                // A blocking netlink reader thread with no event to wait on after a failed
                // receive: pause so a persistent error does not spin a core.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = attach_new(&mut lock(dp), patterns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_and_exact_names() {
        let p = vec!["veth*".to_string(), "vc0".to_string()];
        assert!(matches(&p, "veth0123456789a"));
        assert!(matches(&p, "vc0"));
        assert!(!matches(&p, "vc01"));
        assert!(!matches(&p, "eth0"));
        assert!(!matches(&[], "veth1"));
    }
}
