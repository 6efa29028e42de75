//! A private bpffs mount under the agent's state directory, for pinning maps.
//!
//! bpffs is not mounted on the nodes netlet runs on, and the node's `/sys/fs/bpf` is not ours to
//! manage, so the loader mounts its own instance (each bpffs mount is a separate instance) at
//! `<state dir>/bpffs`. If a bpffs is already mounted there (an earlier run that kept it), it is
//! reused and left alone on drop.

use crate::error::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
use std::path::{Path, PathBuf};

/// A bpffs mounted at [`BpfFs::path`]; unmounted on drop if this value mounted it, unless
/// [`BpfFs::keep`] was called.
#[derive(Debug)]
pub struct BpfFs {
    path: PathBuf,
    unmount_on_drop: bool,
}

impl BpfFs {
    /// Mounts a bpffs at `<state_dir>/bpffs` (creating the directory), or reuses the one
    /// already mounted there.
    pub fn mount_under(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("bpffs");
        std::fs::create_dir_all(&path).map_err(|e| Error::BpfFs {
            path: path.clone(),
            what: "creating the mount point",
            source: e,
        })?;
        if is_bpffs(&path) {
            return Ok(Self {
                path,
                unmount_on_drop: false,
            });
        }
        mount(
            Some("bpffs"),
            &path,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|e| Error::BpfFs {
            path: path.clone(),
            what: "mounting bpffs",
            source: e.into(),
        })?;
        Ok(Self {
            path,
            unmount_on_drop: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a bpffs is mounted at `path`.
    pub fn is_mounted(&self) -> bool {
        is_bpffs(&self.path)
    }

    /// Leaves the mount (and thereby the pinned maps) in place when this value is dropped, so
    /// a restarted agent finds them.
    pub fn keep(mut self) {
        self.unmount_on_drop = false;
    }

    /// Unmounts now (dropping every pin in it) if this value mounted it.
    pub fn unmount(mut self) -> Result<()> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> Result<()> {
        if std::mem::take(&mut self.unmount_on_drop) {
            umount2(&self.path, MntFlags::MNT_DETACH).map_err(|e| Error::BpfFs {
                path: self.path.clone(),
                what: "unmounting bpffs",
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmount() {
            eprintln!("warning: {e}");
        }
    }
}

/// Unmounts the bpffs at `<state_dir>/bpffs` whoever mounted it (dropping every pin in it,
/// for a full cleanup by a later process); returns whether one was mounted.
pub fn unmount_under(state_dir: &Path) -> Result<bool> {
    let path = state_dir.join("bpffs");
    if !is_bpffs(&path) {
        return Ok(false);
    }
    umount2(&path, MntFlags::MNT_DETACH).map_err(|e| Error::BpfFs {
        path: path.clone(),
        what: "unmounting bpffs",
        source: e.into(),
    })?;
    Ok(true)
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}
