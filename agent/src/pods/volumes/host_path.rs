//! `hostPath` volumes: the `type` checks the kubelet makes before a container may mount a
//! node path, creating the path for the `…OrCreate` types.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a hostPath volume failed its `type` check.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// The path does not exist or is not of the required kind.
    #[error("hostPath type check failed: {path} is not a {want}")]
    WrongType {
        /// The node path.
        path: String,
        /// The required kind, e.g. `directory`.
        want: &'static str,
    },
    /// Creating the path for `DirectoryOrCreate` / `FileOrCreate` failed.
    #[error("hostPath {path}: creating it for type {kind}: {source}")]
    Create {
        /// The node path.
        path: String,
        /// The volume type.
        kind: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `type` the API does not define.
    #[error("hostPath {path}: unknown type {kind:?}")]
    UnknownType {
        /// The node path.
        path: String,
        /// The type given.
        kind: String,
    },
}

/// Checks (and for the `…OrCreate` types creates) hostPath `path` as its `type` requires.
/// `""` (the default) checks nothing: the runtime then fails on a missing path.
pub fn check_host_path(path: &str, kind: &str) -> Result<(), HostPathError> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p);
    let wrong = |want| HostPathError::WrongType {
        path: path.into(),
        want,
    };
    let create_err = |source| HostPathError::Create {
        path: path.into(),
        kind: kind.into(),
        source,
    };
    let ok = |pred: fn(&std::fs::FileType) -> bool, want| match &meta {
        Ok(m) if pred(&m.file_type()) => Ok(()),
        _ => Err(wrong(want)),
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(p)
                    .map_err(create_err)?;
                return Ok(());
            }
            ok(|t| t.is_dir(), "directory")
        }
        "Directory" => ok(|t| t.is_dir(), "directory"),
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(parent)
                        .map_err(create_err)?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(p)
                    .map_err(create_err)?;
                return Ok(());
            }
            ok(|t| t.is_file(), "file")
        }
        "File" => ok(|t| t.is_file(), "file"),
        "Socket" => ok(|t| t.is_socket(), "socket"),
        "CharDevice" => ok(|t| t.is_char_device(), "character device"),
        "BlockDevice" => ok(|t| t.is_block_device(), "block device"),
        other => Err(HostPathError::UnknownType {
            path: path.into(),
            kind: other.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        let ds = d.to_str().unwrap();
        assert!(check_host_path(ds, "Directory").is_err());
        check_host_path(ds, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        check_host_path(ds, "Directory").unwrap();
        check_host_path(ds, "DirectoryOrCreate").unwrap();
        assert!(check_host_path(ds, "File").is_err());
        assert!(check_host_path(ds, "FileOrCreate").is_err());

        let f = tmp.path().join("c/f.txt");
        let fs = f.to_str().unwrap();
        assert!(check_host_path(fs, "File").is_err());
        check_host_path(fs, "FileOrCreate").unwrap();
        assert!(f.is_file());
        check_host_path(fs, "File").unwrap();
        assert!(check_host_path(fs, "Directory").is_err());
        assert!(check_host_path(fs, "Socket").is_err());
        assert!(check_host_path(fs, "BlockDevice").is_err());

        check_host_path("/dev/null", "CharDevice").unwrap();
        assert!(check_host_path("/dev/null", "BlockDevice").is_err());
        let sock = tmp.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_host_path(sock.to_str().unwrap(), "Socket").unwrap();

        // No type: nothing checked, nothing created.
        let none = tmp.path().join("none");
        check_host_path(none.to_str().unwrap(), "").unwrap();
        assert!(!none.exists());
        assert!(matches!(
            check_host_path(ds, "Dir"),
            Err(HostPathError::UnknownType { .. })
        ));
    }
}
