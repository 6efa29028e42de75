//! Finding a container's CRI log files in kubelet's layout:
//! `<pod_log_dir>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`.
//!
//! Namespace and pod names cannot contain `_`, so the `<namespace>_<pod>_` prefix names one pod;
//! when a pod was deleted and created again under the same name, the most recently modified
//! directory is the current one.

use std::io;
use std::path::{Path, PathBuf};

/// Why no log file can be served.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// The node has no log directory for the pod.
    #[error("pod \"{namespace}/{pod}\" has no logs on this node")]
    PodNotFound {
        /// Namespace of the pod.
        namespace: String,
        /// Pod name.
        pod: String,
    },
    /// The pod has never started the container (or it has no such container).
    #[error("container \"{container}\" in pod \"{pod}\" has no logs on this node")]
    ContainerNotFound {
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// `previous` was asked for a container that has not restarted.
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious {
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// Reading the directories failed.
    #[error("reading the log directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// One container's log directory.
#[derive(Debug, Clone)]
pub struct ContainerLogs {
    dir: PathBuf,
}

impl ContainerLogs {
    /// Finds the log directory of `container` in pod `namespace/pod` under `root`.
    pub fn find(
        root: &Path,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<Self, LogFileError> {
        let io_err = |source| LogFileError::Io {
            path: root.to_path_buf(),
            source,
        };
        let prefix = format!("{namespace}_{pod}_");
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for entry in std::fs::read_dir(root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io_err)?;
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, entry.path()));
            }
        }
        let Some((_, pod_dir)) = newest else {
            return Err(LogFileError::PodNotFound {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            });
        };
        let dir = pod_dir.join(container);
        if !dir.is_dir() {
            return Err(LogFileError::ContainerNotFound {
                pod: pod.to_string(),
                container: container.to_string(),
            });
        }
        Ok(ContainerLogs { dir })
    }

    /// The restart counts that have a log file, ascending.
    pub fn restarts(&self) -> Result<Vec<u32>, LogFileError> {
        let io_err = |source| LogFileError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut counts = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
                counts.push(n);
            }
        }
        counts.sort_unstable();
        Ok(counts)
    }

    /// The path of run `restart`'s log.
    pub fn file(&self, restart: u32) -> PathBuf {
        self.dir.join(format!("{restart}.log"))
    }

    /// The restart whose log is served: the latest, or the one before it for `previous`.
    pub fn pick(&self, previous: bool, pod: &str, container: &str) -> Result<u32, LogFileError> {
        let counts = self.restarts()?;
        let pick = if previous {
            counts.iter().rev().nth(1)
        } else {
            counts.last()
        };
        pick.copied().ok_or_else(|| {
            let (pod, container) = (pod.to_string(), container.to_string());
            if previous {
                LogFileError::NoPrevious { pod, container }
            } else {
                LogFileError::ContainerNotFound { pod, container }
            }
        })
    }

    /// Whether a later run than `restart` has started logging (the followed file is done).
    pub fn superseded(&self, restart: u32) -> bool {
        self.restarts()
            .map(|c| c.last().is_some_and(|last| *last > restart))
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_latest_and_previous_runs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ns1_web_uid-1/app");
        std::fs::create_dir_all(&dir).unwrap();
        for n in [0, 1, 2] {
            std::fs::write(dir.join(format!("{n}.log")), "").unwrap();
        }
        let logs = ContainerLogs::find(root.path(), "ns1", "web", "app").unwrap();
        assert_eq!(logs.pick(false, "web", "app").unwrap(), 2);
        assert_eq!(logs.pick(true, "web", "app").unwrap(), 1);
        assert!(logs.superseded(1));
        assert!(!logs.superseded(2));
    }

    #[test]
    fn names_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("ns1_web_uid-1/app")).unwrap();
        std::fs::write(root.path().join("ns1_web_uid-1/app/0.log"), "").unwrap();
        let err = ContainerLogs::find(root.path(), "ns1", "webx", "app").unwrap_err();
        assert!(matches!(err, LogFileError::PodNotFound { .. }), "{err}");
        let err = ContainerLogs::find(root.path(), "ns1", "web", "db").unwrap_err();
        assert!(
            matches!(err, LogFileError::ContainerNotFound { .. }),
            "{err}"
        );
        let logs = ContainerLogs::find(root.path(), "ns1", "web", "app").unwrap();
        let err = logs.pick(true, "web", "app").unwrap_err();
        assert_eq!(
            err.to_string(),
            "previous terminated container \"app\" in pod \"web\" not found"
        );
    }
}
