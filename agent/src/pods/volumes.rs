//! Pod volumes: setting up the volumes a container mounts and turning its `volumeMounts` into
//! CRI mounts, refreshing ConfigMap/Secret/downwardAPI files while the pod runs, and removing
//! a pod's volume directories with the pod.
//!
//! Volumes live under `<pods dir>/<pod uid>/volumes/<plugin>/<volume>` (the kubelet's layout,
//! e.g. `kubernetes.io~empty-dir`), bind-mounted into containers by the runtime. Supported:
//! `emptyDir` ([`empty_dir`]), `hostPath` with its type checks ([`host_path`]), `configMap`,
//! `secret`, `downwardAPI` and `projected` volumes of those three and of service account
//! tokens ([`projection`] and [`token`], written by [`atomic`]). Other kinds fail the container
//! with a message naming the kind.
//!
//! Secret and projected volumes live on a tmpfs ([`tmpfs`]), as with the kubelet.
//!
//! # Limits
//! `mountPropagation` is ignored
//! (every mount is private). `subPathExpr` is rejected. A volume mounted with `subPath` sees
//! no ConfigMap updates (as with the kubelet: the file is bound, not the `..data` link).

pub mod atomic;
pub mod empty_dir;
pub mod host_path;
pub mod projection;
pub mod tmpfs;
pub mod token;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeSource, ProjectedVolumeSource, Secret, Volume,
    VolumeMount,
};
use kube::{Api, Client};

use super::env::PodFacts;
use super::resources::{bytes, InvalidQuantity};
use crate::cri::api;
use atomic::{write_payload, AtomicWriteError, FileProjection, Payload};
use host_path::{check_host_path, HostPathError};
use token::ServiceAccountTokens;

/// The directory of the emptyDir plugin below a pod's `volumes` dir.
pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// The directory of the configMap plugin below a pod's `volumes` dir.
pub const CONFIG_MAP: &str = "kubernetes.io~configmap";
/// The directory of the secret plugin below a pod's `volumes` dir.
pub const SECRET: &str = "kubernetes.io~secret";
/// The directory of the downwardAPI plugin below a pod's `volumes` dir.
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
/// The directory of the projected plugin below a pod's `volumes` dir.
pub const PROJECTED: &str = "kubernetes.io~projected";

/// Why a container's volumes could not be set up or mounted.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volumeMount names no volume of the pod.
    #[error("container {container}: volumeMount {volume:?} names no volume of the pod")]
    UnknownVolume {
        /// The container.
        container: String,
        /// The name in its volumeMount.
        volume: String,
    },
    /// A volume kind this agent does not implement.
    #[error("volume {volume:?}: {kind} volumes are not supported by this node")]
    Unsupported {
        /// The volume.
        volume: String,
        /// Its kind, e.g. `persistentVolumeClaim`.
        kind: &'static str,
    },
    /// A subPath that is absolute, leaves the volume, or is otherwise unusable.
    #[error("volume {volume:?}: subPath {sub_path:?} {why}")]
    SubPath {
        /// The volume.
        volume: String,
        /// The subPath.
        sub_path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A referenced ConfigMap or Secret could not be read.
    #[error("reading {kind} {namespace}/{name} for volume {volume:?}: {source}")]
    Read {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The volume.
        volume: String,
        /// The API error (404 when it does not exist), boxed: it is large.
        #[source]
        source: Box<kube::Error>,
    },
    /// An item names a key the ConfigMap or Secret does not have.
    #[error("{kind} {name} has no key {key:?} named in the volume's items")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A downwardAPI item could not be resolved.
    #[error("downwardAPI volume {volume:?}: {message}")]
    Downward {
        /// The volume.
        volume: String,
        /// Why.
        message: String,
    },
    /// A hostPath type check failed.
    #[error("volume {volume:?}: {source}")]
    HostPath {
        /// The volume.
        volume: String,
        /// The check that failed.
        #[source]
        source: HostPathError,
    },
    /// A service account token could not be had from the apiserver.
    #[error("requesting a token of service account {namespace}/{service_account} for volume {volume:?}: {source}")]
    Token {
        /// The volume.
        volume: String,
        /// The pod's namespace.
        namespace: String,
        /// The pod's ServiceAccount.
        service_account: String,
        /// The API error, boxed: it is large.
        #[source]
        source: Box<kube::Error>,
    },
    /// Writing a volume's files failed.
    #[error("volume {volume:?}: {source}")]
    Write {
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        source: AtomicWriteError,
    },
    /// An emptyDir `sizeLimit` that is not a quantity.
    #[error("emptyDir {volume:?}: sizeLimit: {source}")]
    SizeLimit {
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        source: InvalidQuantity,
    },
    /// The tmpfs of a memory-backed volume (`medium: Memory` emptyDir, secret, projected)
    /// could not be mounted.
    #[error(
        "{kind}: mounting a tmpfs on {path}: {source} (the agent needs CAP_SYS_ADMIN in \
         containerd's mount namespace; not falling back to disk)"
    )]
    MemoryMedium {
        /// Which kind of volume, e.g. `emptyDir medium Memory`.
        kind: &'static str,
        /// The volume directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// The waiting reason of a container whose volumes failed: the kubelet's
    /// `CreateContainerConfigError` for what the pod spec or its references get wrong,
    /// `ContainerCreating` while a node path or mount is not usable.
    pub fn waiting_reason(&self) -> &'static str {
        match self {
            Self::HostPath { .. } | Self::MemoryMedium { .. } | Self::Io { .. } => {
                "ContainerCreating"
            }
            _ => "CreateContainerConfigError",
        }
    }
}

/// Where this pod's volumes live: `<pods dir>/<uid>`.
pub fn pod_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid)
}

/// The directory of volume `name` of plugin `plugin` of pod `uid`.
pub fn volume_dir(pods_dir: &Path, uid: &str, plugin: &str, name: &str) -> PathBuf {
    pod_dir(pods_dir, uid)
        .join("volumes")
        .join(plugin)
        .join(name)
}

/// Checks a subPath: relative, no `..` component.
pub fn validate_sub_path(volume: &str, sub_path: &str) -> Result<(), VolumeError> {
    let err = |why: &str| VolumeError::SubPath {
        volume: volume.into(),
        sub_path: sub_path.into(),
        why: why.into(),
    };
    let p = Path::new(sub_path);
    if p.is_absolute() {
        return Err(err("must be a relative path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(err("must not contain '..'"));
    }
    Ok(())
}

/// Reads ConfigMaps, Secrets and service account tokens for volumes.
struct Reader<'a> {
    client: &'a Client,
    namespace: String,
    tokens: &'a ServiceAccountTokens,
}

impl Reader<'_> {
    /// The data of `kind` `name` as bytes; `None` if it does not exist and `optional`.
    async fn data(
        &self,
        kind: &'static str,
        name: &str,
        optional: bool,
        volume: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        let read = if kind == "ConfigMap" {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            api.get(name).await.map(|c| {
                let mut d: BTreeMap<String, Vec<u8>> = c
                    .binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                d.extend(
                    c.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                d
            })
        } else {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            api.get(name).await.map(|s| {
                let mut d: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                d.extend(
                    s.string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                d
            })
        };
        match read {
            Ok(d) => Ok(Some(d)),
            Err(kube::Error::Api(e)) if e.code == 404 && optional => Ok(None),
            Err(source) => Err(VolumeError::Read {
                kind,
                namespace: self.namespace.clone(),
                name: name.into(),
                volume: volume.into(),
                source: Box::new(source),
            }),
        }
    }
}

/// The payload of a file-projecting volume (configMap, secret, downwardAPI) with the plugin
/// directory it goes to; `None` for other kinds.
async fn payload(
    reader: &Reader<'_>,
    facts: PodFacts<'_>,
    v: &Volume,
) -> Option<Result<(&'static str, Payload), VolumeError>> {
    let name = v.name.as_str();
    if let Some(c) = &v.config_map {
        let optional = c.optional.unwrap_or(false);
        let r = async {
            let data = reader.data("ConfigMap", &c.name, optional, name).await?;
            let p = projection::key_payload(
                "ConfigMap",
                &c.name,
                data.as_ref(),
                c.items.as_deref(),
                c.default_mode,
                optional,
            )?;
            Ok((CONFIG_MAP, p))
        };
        return Some(r.await);
    }
    if let Some(s) = &v.secret {
        let optional = s.optional.unwrap_or(false);
        let secret = s.secret_name.clone().unwrap_or_default();
        let r = async {
            let data = reader.data("Secret", &secret, optional, name).await?;
            let p = projection::key_payload(
                "Secret",
                &secret,
                data.as_ref(),
                s.items.as_deref(),
                s.default_mode,
                optional,
            )?;
            Ok((SECRET, p))
        };
        return Some(r.await);
    }
    if let Some(d) = &v.downward_api {
        return Some(projection::downward_payload(facts, d, name).map(|p| (DOWNWARD_API, p)));
    }
    if let Some(pr) = &v.projected {
        return Some(
            projected(reader, facts, pr, name)
                .await
                .map(|p| (PROJECTED, p)),
        );
    }
    None
}

/// The payload of a projected volume: its configMap, secret and downwardAPI sources merged
/// (later sources win on the same path), and service account tokens. Other sources (trust
/// bundles, pod certificates) are not supported.
async fn projected(
    reader: &Reader<'_>,
    facts: PodFacts<'_>,
    pr: &ProjectedVolumeSource,
    volume: &str,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    let mode = pr.default_mode;
    for src in pr.sources.iter().flatten() {
        if let Some(c) = &src.config_map {
            let optional = c.optional.unwrap_or(false);
            let data = reader.data("ConfigMap", &c.name, optional, volume).await?;
            let items = c.items.as_deref();
            let p = projection::key_payload(
                "ConfigMap",
                &c.name,
                data.as_ref(),
                items,
                mode,
                optional,
            )?;
            out.extend(p);
        } else if let Some(s) = &src.secret {
            let optional = s.optional.unwrap_or(false);
            let data = reader.data("Secret", &s.name, optional, volume).await?;
            let items = s.items.as_deref();
            let p =
                projection::key_payload("Secret", &s.name, data.as_ref(), items, mode, optional)?;
            out.extend(p);
        } else if let Some(d) = &src.downward_api {
            let source = DownwardAPIVolumeSource {
                items: d.items.clone(),
                default_mode: mode,
                ..Default::default()
            };
            out.extend(projection::downward_payload(facts, &source, volume)?);
        } else if let Some(t) = &src.service_account_token {
            let token = reader
                .tokens
                .token(reader.client, facts.pod, t, volume)
                .await?;
            let file = FileProjection {
                data: token.into_bytes(),
                mode: mode.unwrap_or(projection::DEFAULT_MODE) as u32,
            };
            out.insert(t.path.clone(), file);
        } else {
            return Err(VolumeError::Unsupported {
                volume: volume.into(),
                kind: "projected clusterTrustBundle/podCertificate source in",
            });
        }
    }
    Ok(out)
}

/// The plugins whose volumes live on a tmpfs, as with the kubelet: secret material never
/// reaches the node's disk (a projected volume may hold secrets too).
const MEMORY_BACKED: [&str; 2] = [SECRET, PROJECTED];

/// Creates the volume directory `dir` of `plugin` and mounts a tmpfs on it (idempotent).
fn in_memory(dir: &Path, plugin: &'static str) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io {
        op: "creating volume directory",
        path: dir.to_path_buf(),
        source,
    })?;
    tmpfs::mount_on(dir, None).map_err(|source| VolumeError::MemoryMedium {
        kind: if plugin == SECRET {
            "secret volume"
        } else {
            "projected volume"
        },
        path: dir.to_path_buf(),
        source,
    })
}

/// Sets up volume `v` of the pod (idempotent) and returns its directory on the node.
async fn set_up(
    reader: &Reader<'_>,
    pods_dir: &Path,
    facts: PodFacts<'_>,
    v: &Volume,
) -> Result<PathBuf, VolumeError> {
    let uid = facts.pod.metadata.uid.as_deref().unwrap_or_default();
    let name = v.name.as_str();
    if let Some(e) = &v.empty_dir {
        let dir = volume_dir(pods_dir, uid, EMPTY_DIR, name);
        let memory = e.medium.as_deref() == Some("Memory");
        let size = match &e.size_limit {
            Some(q) if memory => Some(bytes(&q.0).map_err(|source| VolumeError::SizeLimit {
                volume: name.into(),
                source,
            })?),
            _ => None,
        };
        empty_dir::set_up(&dir, memory, size)?;
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        check_host_path(&h.path, h.type_.as_deref().unwrap_or_default()).map_err(|source| {
            VolumeError::HostPath {
                volume: name.into(),
                source,
            }
        })?;
        return Ok(PathBuf::from(&h.path));
    }
    if let Some(r) = payload(reader, facts, v).await {
        let (plugin, p) = r?;
        let dir = volume_dir(pods_dir, uid, plugin, name);
        if MEMORY_BACKED.contains(&plugin) {
            in_memory(&dir, plugin)?;
        }
        write_payload(&dir, &p).map_err(|source| VolumeError::Write {
            volume: name.into(),
            source,
        })?;
        return Ok(dir);
    }
    Err(VolumeError::Unsupported {
        volume: name.into(),
        kind: kind(v),
    })
}

/// The kind of a volume, for messages.
fn kind(v: &Volume) -> &'static str {
    let kinds: [(&'static str, bool); 7] = [
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("nfs", v.nfs.is_some()),
        ("csi", v.csi.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("image", v.image.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("gitRepo", v.git_repo.is_some()),
    ];
    kinds
        .iter()
        .find(|(_, set)| *set)
        .map_or("this kind of", |(k, _)| k)
}

/// Sets up the volumes `container` mounts and returns its CRI mounts, in `volumeMounts` order.
pub async fn container_mounts(
    client: &Client,
    tokens: &ServiceAccountTokens,
    pods_dir: &Path,
    facts: PodFacts<'_>,
    container: &Container,
) -> Result<Vec<api::Mount>, VolumeError> {
    let volumes: HashMap<&str, &Volume> = facts
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let reader = Reader {
        client,
        namespace: facts.pod.metadata.namespace.clone().unwrap_or_default(),
        tokens,
    };
    let mut dirs: HashMap<&str, PathBuf> = HashMap::new();
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let Some(v) = volumes.get(vm.name.as_str()) else {
            return Err(VolumeError::UnknownVolume {
                container: container.name.clone(),
                volume: vm.name.clone(),
            });
        };
        let dir = match dirs.get(vm.name.as_str()) {
            Some(d) => d.clone(),
            None => {
                let d = set_up(&reader, pods_dir, facts, v).await?;
                dirs.insert(vm.name.as_str(), d.clone());
                d
            }
        };
        // Files the kubelet writes are always mounted read-only.
        let projected = v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some();
        mounts.push(api::Mount {
            container_path: vm.mount_path.clone(),
            host_path: mount_source(&dir, vm)?.to_string_lossy().into_owned(),
            readonly: vm.read_only.unwrap_or(false) || projected,
            propagation: api::MountPropagation::PropagationPrivate as i32,
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// The node path to bind for `vm` of a volume at `dir`: `dir` itself, or its `subPath`
/// (created as a directory when missing, as the kubelet does), which must resolve to a path
/// inside `dir` even through symlinks.
pub fn mount_source(dir: &Path, vm: &VolumeMount) -> Result<PathBuf, VolumeError> {
    if vm.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(VolumeError::SubPath {
            volume: vm.name.clone(),
            sub_path: vm.sub_path_expr.clone().unwrap_or_default(),
            why: "is a subPathExpr, which this node does not support".into(),
        });
    }
    let sub = vm.sub_path.as_deref().unwrap_or_default();
    if sub.is_empty() {
        return Ok(dir.to_path_buf());
    }
    validate_sub_path(&vm.name, sub)?;
    let err = |why: String| VolumeError::SubPath {
        volume: vm.name.clone(),
        sub_path: sub.into(),
        why,
    };
    let path = dir.join(sub);
    if std::fs::symlink_metadata(&path).is_err() {
        std::fs::create_dir_all(&path).map_err(|e| err(format!("cannot be created: {e}")))?;
    }
    let root = dir
        .canonicalize()
        .map_err(|e| err(format!("volume directory unusable: {e}")))?;
    let real = path
        .canonicalize()
        .map_err(|e| err(format!("cannot be resolved: {e}")))?;
    if !real.starts_with(&root) {
        return Err(err(format!(
            "resolves to {} outside the volume",
            real.display()
        )));
    }
    Ok(real)
}

/// Rewrites the files of the pod's configMap, secret, downwardAPI and projected volumes that
/// are set up (a no-op for unchanged ones), so running containers see updates. Returns the
/// names of the volumes it changed; a volume that fails keeps its old files.
pub async fn refresh(
    client: &Client,
    tokens: &ServiceAccountTokens,
    pods_dir: &Path,
    facts: PodFacts<'_>,
) -> (Vec<String>, Vec<VolumeError>) {
    let uid = facts.pod.metadata.uid.as_deref().unwrap_or_default();
    let reader = Reader {
        client,
        namespace: facts.pod.metadata.namespace.clone().unwrap_or_default(),
        tokens,
    };
    let (mut changed, mut errors) = (Vec::new(), Vec::new());
    let volumes = facts.pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for v in volumes.into_iter().flatten() {
        let plugin = if v.config_map.is_some() {
            CONFIG_MAP
        } else if v.secret.is_some() {
            SECRET
        } else if v.downward_api.is_some() {
            DOWNWARD_API
        } else if v.projected.is_some() {
            PROJECTED
        } else {
            continue;
        };
        let dir = volume_dir(pods_dir, uid, plugin, &v.name);
        if !dir.is_dir() {
            continue;
        }
        let written = match payload(&reader, facts, v).await {
            Some(Ok((_, p))) => write_payload(&dir, &p).map_err(|source| VolumeError::Write {
                volume: v.name.clone(),
                source,
            }),
            Some(Err(e)) => Err(e),
            None => continue,
        };
        match written {
            Ok(true) => changed.push(v.name.clone()),
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }
    (changed, errors)
}

/// Removes the volume directories of pod `uid`: unmounts its memory-backed emptyDirs, then
/// deletes `<pods dir>/<uid>`. Refuses to delete while anything is still mounted below it.
pub fn remove_pod_volumes(pods_dir: &Path, uid: &str) -> Result<(), VolumeError> {
    let dir = pod_dir(pods_dir, uid);
    if !dir.exists() {
        return Ok(());
    }
    for plugin in [EMPTY_DIR, SECRET, PROJECTED] {
        let Ok(entries) = std::fs::read_dir(dir.join("volumes").join(plugin)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            tmpfs::unmount(&path).map_err(|source| VolumeError::Io {
                op: "unmounting the tmpfs of",
                path,
                source,
            })?;
        }
    }
    if let Some(m) = mounts_below(&dir).into_iter().next() {
        return Err(VolumeError::Io {
            op: "removing pod volumes: still mounted",
            path: PathBuf::from(m),
            source: std::io::Error::from(std::io::ErrorKind::ResourceBusy),
        });
    }
    std::fs::remove_dir_all(&dir).map_err(|source| VolumeError::Io {
        op: "removing pod volumes",
        path: dir.clone(),
        source,
    })
}

/// Removes the volume directories of pods not in `live` (pods deleted while the agent was
/// down). Only entries holding a `volumes` dir are touched. Returns the uids removed.
pub fn sweep_pod_dirs(pods_dir: &Path, live: &HashSet<String>) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if live.contains(&uid) || !e.path().join("volumes").is_dir() {
            continue;
        }
        match remove_pod_volumes(pods_dir, &uid) {
            Ok(()) => removed.push(uid),
            Err(e) => tracing::warn!("removing volumes of vanished pod {uid}: {e}"),
        }
    }
    removed
}

/// Mount points at or below `dir`, from this process's mount table.
fn mounts_below(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, sub: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: "/data".into(),
            sub_path: Some(sub.into()),
            ..Default::default()
        }
    }

    #[test]
    fn sub_path_checks() {
        for bad in ["/etc", "../x", "a/../../b", "a/.."] {
            assert!(validate_sub_path("v", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b", "x..y", "./a"] {
            validate_sub_path("v", good).unwrap();
        }
    }

    #[test]
    fn sub_path_created_and_symlink_escape_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let got = mount_source(&vol, &vm("v", "logs/app")).unwrap();
        assert_eq!(got, vol.canonicalize().unwrap().join("logs/app"));
        assert!(got.is_dir());
        assert_eq!(
            mount_source(&vol, &vm("v", "")).unwrap(),
            vol,
            "no subPath: the volume itself"
        );
        std::os::unix::fs::symlink("/etc", vol.join("out")).unwrap();
        let err = mount_source(&vol, &vm("v", "out")).unwrap_err();
        assert!(err.to_string().contains("outside the volume"), "{err}");
        assert!(mount_source(&vol, &vm("v", "../vol")).is_err());
        let expr = VolumeMount {
            sub_path_expr: Some("$(POD)".into()),
            ..vm("v", "")
        };
        assert!(mount_source(&vol, &expr).is_err());
    }

    #[test]
    fn pod_dirs_removed_and_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let pods = tmp.path();
        let a = volume_dir(pods, "uid-a", EMPTY_DIR, "cache");
        let b = volume_dir(pods, "uid-b", CONFIG_MAP, "cfg");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("f"), "x").unwrap();
        // Not a pod volume dir (e.g. pod logs sharing the directory): left alone.
        std::fs::create_dir_all(pods.join("default_web_uid-c/app")).unwrap();
        remove_pod_volumes(pods, "uid-a").unwrap();
        assert!(!pod_dir(pods, "uid-a").exists());
        remove_pod_volumes(pods, "uid-a").unwrap();
        let live: HashSet<String> = HashSet::new();
        assert_eq!(sweep_pod_dirs(pods, &live), ["uid-b"]);
        assert!(pods.join("default_web_uid-c").exists());
    }
}
