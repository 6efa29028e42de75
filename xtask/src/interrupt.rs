//! Ctrl-C (SIGINT) and SIGTERM turned into an error instead of sudden death, so that tasks
//! holding namespace guards unwind and delete their namespaces.
//!
//! The signals are blocked in every thread and a dedicated thread waits for them with
//! `sigwait`; no signal handler runs, so no unsafe code is needed. Child processes start with
//! an empty signal mask (std resets it), so a plugin or `ping` still dies on Ctrl-C from the
//! terminal — its call then fails and the task unwinds. Loops that only run our own code poll
//! [`check`] between steps.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};

/// Set once SIGINT or SIGTERM arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Starts catching SIGINT and SIGTERM. Call on the main thread before any other thread starts:
/// threads inherit the blocked mask, and a thread started earlier would still take the
/// default action (terminate the process without cleanup).
pub fn catch() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .context("blocking SIGINT/SIGTERM for cleanup")?;
    std::thread::Builder::new()
        .name("signal-wait".to_owned())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                let again = INTERRUPTED.swap(true, Ordering::SeqCst);
                eprintln!(
                    "\n{sig}: {}",
                    if again {
                        "still cleaning up, please wait"
                    } else {
                        "stopping after the current step and cleaning up"
                    }
                );
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Fails once an interrupt arrived, so the caller unwinds (and its guards clean up).
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
