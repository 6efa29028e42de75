//! Memory-backed volume directories: a tmpfs mounted on the volume's directory.
//!
//! Used by `emptyDir` with `medium: Memory` and, as the kubelet does, by secret and projected
//! volumes, so secret material never reaches the node's disk. The mount is made in the agent's
//! mount namespace; containerd must share it to bind the tmpfs rather than the directory
//! beneath it. That holds for the test fixture and `cargo xtask up`, which both start
//! containerd and the agent with `nsenter --net` only (same mount namespace).

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// Mounts a tmpfs (mode 0777 root, at most `size_bytes` when given, else the kernel's default
/// of half the RAM) on the existing directory `dir`, unless one is already mounted there.
pub fn mount_on(dir: &Path, size_bytes: Option<i64>) -> Result<(), std::io::Error> {
    if is_tmpfs(dir) {
        return Ok(());
    }
    let mut options = String::from("mode=0777");
    if let Some(size) = size_bytes.filter(|s| *s > 0) {
        options.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Whether a tmpfs is mounted at `dir` itself (not merely a directory on a tmpfs: then
/// `dir` and its parent are on the same device).
pub fn is_tmpfs(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let parent = dir.parent().unwrap_or(dir);
    let mount_point = dev(dir).is_some() && dev(dir) != dev(parent);
    mount_point && statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// Unmounts the tmpfs at `dir`, if any (lazily: a process still inside does not block the
/// pod's cleanup).
pub fn unmount(dir: &Path) -> Result<(), std::io::Error> {
    if is_tmpfs(dir) {
        umount2(dir, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("v");
        std::fs::create_dir(&sub).unwrap();
        assert!(!is_tmpfs(&sub));
        // Unmounting where nothing is mounted is a no-op.
        unmount(&sub).unwrap();
        assert!(sub.is_dir());
    }

    #[test]
    fn mounts_once_and_unmounts() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("v");
        std::fs::create_dir(&sub).unwrap();
        mount_on(&sub, Some(1 << 20)).unwrap();
        // Unmounted even if an assertion below fails, so the temp dir can go.
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = unmount(self.0);
            }
        }
        let _guard = Unmount(&sub);
        assert!(is_tmpfs(&sub));
        // A second mount is a no-op, not a tmpfs stacked on the first.
        std::fs::write(sub.join("f"), b"x").unwrap();
        mount_on(&sub, None).unwrap();
        assert_eq!(std::fs::read(sub.join("f")).unwrap(), b"x");
        unmount(&sub).unwrap();
        assert!(!is_tmpfs(&sub));
        assert!(!sub.join("f").exists());
    }
}
