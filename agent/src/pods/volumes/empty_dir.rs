//! `emptyDir` volumes: a directory per pod and volume, shared by all of the pod's containers,
//! kept across container restarts and removed with the pod.
//!
//! `medium: Memory` mounts a tmpfs on that directory (its size capped by `sizeLimit` when set,
//! else the kernel's default of half the RAM). The mount is made in the agent's mount
//! namespace; containerd must share it to bind the tmpfs rather than the directory beneath
//! it. That holds for the test fixture and `cargo xtask up`, which both start containerd and
//! the agent with `nsenter --net` only (same mount namespace). When the agent cannot mount
//! (no CAP_SYS_ADMIN), the container does not start and the error says so: the volume never
//! silently falls back to disk. For disk-backed emptyDirs `sizeLimit` is not enforced (the
//! kubelet evicts the pod instead; this agent has no eviction).

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

use super::VolumeError;

/// Creates emptyDir `dir` (mode 0777, like the kubelet, so non-root containers can write);
/// with `memory`, mounts a tmpfs of at most `size_bytes` on it unless one is already there.
pub fn set_up(dir: &Path, memory: bool, size_bytes: Option<i64>) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |op: &'static str| {
        let path = dir.to_path_buf();
        move |source| VolumeError::Io { op, path, source }
    };
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(io("creating emptyDir"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io("setting the mode of emptyDir"))?;
    }
    if memory && !is_tmpfs(dir) {
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
        .map_err(|e| VolumeError::MemoryMedium {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
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
pub fn tear_down(dir: &Path) -> Result<(), VolumeError> {
    if is_tmpfs(dir) {
        umount2(dir, MntFlags::MNT_DETACH).map_err(|e| VolumeError::Io {
            op: "unmounting the tmpfs of emptyDir",
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
}
