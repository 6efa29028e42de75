//! Writing a set of files into a volume directory so a reader never sees a half-updated set,
//! the kubelet's `AtomicWriter` layout:
//!
//! ```text
//! <dir>/..2026_11_23_21_06_21.123456789/<files>   one directory per version
//! <dir>/..data -> ..2026_11_23_21_06_21.123456789   swapped with one rename(2)
//! <dir>/<top-level name> -> ..data/<top-level name> what the container reads
//! ```
//!
//! A new version is written next to the old one, then the `..data` symlink is replaced by
//! renaming a fresh `..data_tmp` link over it, which is atomic. Only then is the old version
//! removed. Nothing is rewritten when the payload equals what `..data` already holds, so a
//! periodic refresh costs a few reads.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// The link that points at the current version.
const DATA: &str = "..data";
/// The link built next to [`DATA`] and renamed over it.
const DATA_TMP: &str = "..data_tmp";

/// One file of a payload: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// The content.
    pub data: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

/// A payload: relative file path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    /// A payload path is absolute, empty, contains `..` or starts with `..` (which would clash
    /// with the writer's own entries).
    #[error("invalid file path {0:?} in volume payload: must be relative, without '..'")]
    InvalidPath(String),
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Checks that `p` is a clean relative path that stays below the directory.
pub fn validate_path(p: &str) -> Result<(), AtomicWriteError> {
    let bad = || AtomicWriteError::InvalidPath(p.to_string());
    if p.is_empty() || p.starts_with("..") {
        return Err(bad());
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => {}
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// Writes `payload` into `dir` (created if needed) atomically; returns whether anything
/// changed.
pub fn write_payload(dir: &Path, payload: &Payload) -> Result<bool, AtomicWriteError> {
    for p in payload.keys() {
        validate_path(p)?;
    }
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError::Io { op, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err("creating volume directory", dir))?;
    let data_link = dir.join(DATA);
    let old = std::fs::read_link(&data_link).ok();
    if let Some(old) = &old {
        if matches(&dir.join(old), payload) {
            return Ok(false);
        }
    }
    let version = dir.join(version_name());
    std::fs::create_dir(&version).map_err(io_err("creating", &version))?;
    std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &version))?;
    for (rel, file) in payload {
        let path = version.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        std::fs::write(&path, &file.data).map_err(io_err("writing", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err("setting the mode of", &path))?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    let target = version.file_name().map(PathBuf::from).unwrap_or_default();
    symlink(&target, &tmp).map_err(io_err("linking", &tmp))?;
    std::fs::rename(&tmp, &data_link).map_err(io_err("renaming over", &data_link))?;
    // The user-visible names: one link per top-level entry, stale ones removed.
    let tops: BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(top), &link).map_err(io_err("linking", &link))?;
        }
    }
    let entries = std::fs::read_dir(dir).map_err(io_err("listing", dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
        if !name.starts_with("..") && is_link && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        let old = dir.join(old);
        std::fs::remove_dir_all(&old).map_err(io_err("removing old version", &old))?;
    }
    Ok(true)
}

/// A version directory name that sorts by time and does not repeat within one process.
fn version_name() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("..{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Whether version directory `dir` holds exactly `payload` (contents and modes).
fn matches(dir: &Path, payload: &Payload) -> bool {
    let mut found = Vec::new();
    if walk(dir, dir, &mut found).is_err() || found.len() != payload.len() {
        return false;
    }
    found.iter().all(|rel| {
        let Some(want) = payload.get(rel) else {
            return false;
        };
        let path = dir.join(rel);
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777);
        mode.is_ok_and(|m| m == want.mode & 0o7777)
            && std::fs::read(&path).is_ok_and(|d| d == want.data)
    })
}

/// Collects the relative paths of the regular files below `dir`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &e.path(), out)?;
        } else {
            let rel = e.path();
            let rel = rel.strip_prefix(root).unwrap_or(&rel);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn paths_must_stay_inside() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "..x/y"] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b.txt", "x..y", ".hidden"] {
            assert!(validate_path(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn writes_links_swaps_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let mut p = Payload::new();
        p.insert("color".into(), file("blue", 0o644));
        p.insert("sub/key".into(), file("k", 0o400));
        assert!(write_payload(&dir, &p).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("color")).unwrap(), "blue");
        assert_eq!(std::fs::read_to_string(dir.join("sub/key")).unwrap(), "k");
        let mode = std::fs::metadata(dir.join("sub/key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert!(std::fs::symlink_metadata(dir.join("color"))
            .unwrap()
            .file_type()
            .is_symlink());
        let first = std::fs::read_link(dir.join(DATA)).unwrap();

        // Same payload: nothing rewritten, same version.
        assert!(!write_payload(&dir, &p).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA)).unwrap(), first);

        // New payload: new version, old one gone, dropped key's link gone.
        let mut q = Payload::new();
        q.insert("color".into(), file("red", 0o644));
        assert!(write_payload(&dir, &q).unwrap());
        let second = std::fs::read_link(dir.join(DATA)).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists());
        assert_eq!(std::fs::read_to_string(dir.join("color")).unwrap(), "red");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(DATA_TMP).exists());

        // A mode change alone is a change.
        q.insert("color".into(), file("red", 0o600));
        assert!(write_payload(&dir, &q).unwrap());
    }

    #[test]
    fn rejects_escaping_payload_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("../evil".into(), file("x", 0o644));
        assert!(matches!(
            write_payload(tmp.path(), &p),
            Err(AtomicWriteError::InvalidPath(_))
        ));
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }
}
