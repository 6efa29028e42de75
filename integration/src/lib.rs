//! Test helpers shared by every crate that touches the kernel, plus cross-crate tests.
//!
//! Network safety is the first rule of this workspace: no test changes the host's own network
//! namespace. Every networking test creates its own namespaces through [`NetNs`] (names start
//! with `nlt-`), does everything inside them, and the guard deletes them on drop, also when the
//! test panics. Daemons a test starts are held by [`ChildGuard`] and killed by PID on drop.
//!
//! # Layout
//! - [`netns`]: the namespace guard and helpers to run commands inside a namespace.
//! - [`process`]: the child-process guard.
//! - [`containerd`]: a containerd confined to one directory, and its forced teardown.
//! - [`apiserver`]: our apiserver in a temporary directory, for API-driven tests.
//! - [`images`]: the names of the images `cargo xtask images` builds.

pub mod apiserver;
pub mod containerd;
pub mod images;
pub mod netns;
pub mod process;

pub use apiserver::{create_namespace, status_code, TestApiserver};
pub use netns::NetNs;
pub use process::ChildGuard;

/// Fails loudly when the caller is not root: a kernel test that cannot run must not pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces and needs root; run it as root (cargo xtask test)"
    );
}
