//! [`ChildGuard`]: a process this test started, killed by its PID when the guard drops.

use std::process::Child;

/// Owns a child process; on drop it is killed (by PID, never by name) and reaped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Takes ownership of a started child.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// The child's PID.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Gives the child back, e.g. to wait for it; the guard no longer kills it.
    pub fn into_inner(mut self) -> Child {
        self.child.take().expect("child present until taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
