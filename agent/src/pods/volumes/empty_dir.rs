//! `emptyDir` volumes: a directory per pod and volume, shared by all of the pod's containers,
//! kept across container restarts and removed with the pod.
//!
//! `medium: Memory` mounts a tmpfs on that directory ([`super::tmpfs`]; its size capped by
//! `sizeLimit` when set, else the kernel's default of half the RAM). When the agent cannot
//! mount (no CAP_SYS_ADMIN), the container does not start and the error says so: the volume
//! never silently falls back to disk. For disk-backed emptyDirs `sizeLimit` is not enforced
//! (the kubelet evicts the pod instead; this agent has no eviction).

use std::path::Path;

use super::{tmpfs, VolumeError};

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
    if memory {
        tmpfs::mount_on(dir, size_bytes).map_err(|source| VolumeError::MemoryMedium {
            kind: "emptyDir medium Memory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}
