//! Static pods: Pod manifests (YAML or JSON) in a directory on the node, run without an
//! apiserver, as the kubelet's `--pod-manifest-path` does.
//!
//! Each file is one Pod. It runs as `<name>-<nodeName>` (namespace `default` unless set),
//! bound to this node, with a uid derived from the node, the file's path and its content (so
//! an unchanged file keeps its uid across agent restarts and its sandbox is re-adopted, and a
//! changed file is a new pod that replaces the old one) and the kubelet's annotations
//! `kubernetes.io/config.source: file`, `kubernetes.io/config.hash` (= the uid) and
//! `kubernetes.io/config.seen` (when this agent first read that content).
//!
//! [`ManifestDir::read`] is pure file reading; the pod manager polls it and hands the pods to
//! workers like API pods. Their status goes to a mirror pod in the API ([`super::mirror`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};

use super::status::now;

/// Annotation: where the pod came from (`file` for static pods, `api` otherwise).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// Annotation: the static pod's hash (its uid).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Annotation: when the agent first saw this version of the manifest.
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// Annotation of a mirror pod: the hash of the static pod it mirrors.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Why a manifest was skipped (logged; the other manifests still run).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("reading static pod manifest {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a JSON nor a YAML Pod.
    #[error("parsing static pod manifest {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The Pod has no name.
    #[error("static pod manifest {0} has no metadata.name")]
    NoName(PathBuf),
}

/// Whether `pod` is a static pod read from a file.
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, CONFIG_SOURCE) == Some("file")
}

/// Whether `pod` (from the API) is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, CONFIG_MIRROR).is_some()
}

/// The value of annotation `key` of `pod`.
pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The manifest directory of one node, remembering when each manifest version was first seen.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    node: String,
    /// `config.seen` by uid, kept while the manifest version exists.
    seen: HashMap<String, String>,
}

impl ManifestDir {
    /// The manifests in `dir` for node `node`.
    pub fn new(dir: PathBuf, node: &str) -> Self {
        Self {
            dir,
            node: node.into(),
            seen: HashMap::new(),
        }
    }

    /// Reads every manifest (files ending in `.yaml`, `.yml` or `.json`; others and hidden
    /// files are ignored, like editors' swap files). Returns the pods by uid and the errors
    /// of the files that were skipped. A missing directory has no pods.
    pub fn read(&mut self) -> (HashMap<String, Pod>, Vec<ManifestError>) {
        let mut pods = HashMap::new();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (pods, errors),
            Err(source) => {
                errors.push(ManifestError::Read {
                    path: self.dir.clone(),
                    source,
                });
                return (pods, errors);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_manifest(p))
            .collect();
        paths.sort();
        for path in paths {
            let result = std::fs::read(&path)
                .map_err(|source| ManifestError::Read {
                    path: path.clone(),
                    source,
                })
                .and_then(|raw| static_pod(&raw, &path, &self.node));
            match result {
                Ok(mut pod) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let seen = self
                        .seen
                        .entry(uid.clone())
                        .or_insert_with(|| now().0.to_string())
                        .clone();
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(CONFIG_SEEN.into(), seen);
                    pods.insert(uid, pod);
                }
                Err(e) => errors.push(e),
            }
        }
        self.seen.retain(|uid, _| pods.contains_key(uid));
        (pods, errors)
    }
}

/// A file the directory scan reads.
fn is_manifest(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    !name.starts_with('.')
        && p.is_file()
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The static pod of manifest `raw` read from `path` on node `node` (without `config.seen`).
pub fn static_pod(raw: &[u8], path: &Path, node: &str) -> Result<Pod, ManifestError> {
    let parsed: Result<Pod, String> = if raw.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice(raw).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_slice(raw).map_err(|e| e.to_string())
    };
    let mut pod = parsed.map_err(|message| ManifestError::Parse {
        path: path.into(),
        message,
    })?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ManifestError::NoName(path.into()))?;
    let mut hasher = Sha256::new();
    hasher.update(format!("host:{node}\0file:{}\0", path.display()));
    hasher.update(raw);
    let digest = hasher.finalize();
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let m = &mut pod.metadata;
    m.name = Some(format!("{name}-{node}"));
    m.namespace = Some(
        m.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    );
    m.uid = Some(hash.clone());
    m.resource_version = None;
    let annotations = m.annotations.get_or_insert_with(Default::default);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.insert(CONFIG_HASH.into(), hash);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.into());
    pod.status = None;
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  containers:\n  - name: app\n    image: img\n";

    #[test]
    fn yaml_and_json_manifests_become_node_bound_static_pods() {
        let p = static_pod(YAML.as_bytes(), Path::new("/m/web.yaml"), "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(
            p.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("img")
        );
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert_eq!(annotation(&p, CONFIG_HASH), Some(uid.as_str()));
        assert!(is_static(&p) && !is_mirror(&p));
        let json = r#"{"metadata": {"name": "db", "namespace": "kube-system"},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}}"#;
        let j = static_pod(json.as_bytes(), Path::new("/m/db.json"), "n1").unwrap();
        assert_eq!(j.metadata.name.as_deref(), Some("db-n1"));
        assert_eq!(j.metadata.namespace.as_deref(), Some("kube-system"));
        // Same content, same uid; another content, node or file: another uid.
        let again = static_pod(YAML.as_bytes(), Path::new("/m/web.yaml"), "n1").unwrap();
        assert_eq!(again.metadata.uid.as_deref(), Some(uid.as_str()));
        let changed = YAML.replace("image: img", "image: img2");
        for other in [
            static_pod(changed.as_bytes(), Path::new("/m/web.yaml"), "n1"),
            static_pod(YAML.as_bytes(), Path::new("/m/web.yaml"), "n2"),
            static_pod(YAML.as_bytes(), Path::new("/m/web2.yaml"), "n1"),
        ] {
            assert_ne!(other.unwrap().metadata.uid.as_deref(), Some(uid.as_str()));
        }
        let err = static_pod(b"spec: {}\n", Path::new("/m/x.yaml"), "n1").unwrap_err();
        assert!(matches!(err, ManifestError::NoName(_)), "{err}");
        let err = static_pod(b"{not json", Path::new("/m/x.json"), "n1").unwrap_err();
        assert!(err.to_string().contains("/m/x.json"), "{err}");
    }

    #[test]
    fn the_directory_scan_keeps_seen_times_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = ManifestDir::new(dir.path().join("absent"), "n1");
        assert!(m.read().0.is_empty());
        let mut m = ManifestDir::new(dir.path().into(), "n1");
        std::fs::write(dir.path().join("web.yaml"), YAML).unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let (pods, errors) = m.read();
        assert_eq!(pods.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let pod = pods.values().next().unwrap();
        let seen = annotation(pod, CONFIG_SEEN).unwrap().to_string();
        let (again, _) = m.read();
        let pod2 = again.values().next().unwrap();
        assert_eq!(annotation(pod2, CONFIG_SEEN), Some(seen.as_str()));
        assert_eq!(pod.metadata.uid, pod2.metadata.uid);
    }
}
