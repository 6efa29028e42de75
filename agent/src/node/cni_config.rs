//! The CNI network config containerd uses for this node's pods, written once the control
//! plane has assigned the node its pod CIDR (`spec.podCIDR`, by node IPAM).
//!
//! The file is `10-netlet.conflist` in the CNI conf dir, written atomically (temp file in the
//! same directory, fsync, rename) so containerd's config watcher never loads half a file, and
//! only when its content would change. The field names are those `netlet-cni` parses
//! (`cni-plugin/src/config.rs`, `cni-plugin/src/ipam/config.rs`); `cniVersion` is 1.0.0 because
//! containerd 1.6 speaks no later version.

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The conflist's file name: `10-` sorts it before most other configs, as containerd uses
/// the first one.
pub const CONFLIST_NAME: &str = "10-netlet.conflist";

/// The CNI network's name (also netlet-cni's IPAM store directory).
pub const NETWORK_NAME: &str = "netlet";

/// The node bridge pods attach to.
pub const BRIDGE: &str = "netlet0";

/// The plugins the conflist names, which containerd must find in the CNI bin dir.
pub const PLUGINS: [&str; 2] = ["netlet", "portmap"];

/// The [`PLUGINS`] that are not executable files in `bin_dir`: pods cannot get a network
/// until they are installed, so the node is not ready.
pub fn missing_plugins(bin_dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    PLUGINS
        .iter()
        .map(|p| bin_dir.join(p))
        .filter(|p| {
            !std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect()
}

/// Why no config can be written for a pod CIDR.
#[derive(Debug, thiserror::Error)]
pub enum CniConfigError {
    /// `spec.podCIDR` is not an IPv4 CIDR.
    #[error("Node {node} spec.podCIDR {cidr:?} is not an IPv4 CIDR")]
    BadPodCidr {
        /// The node.
        node: String,
        /// The value.
        cidr: String,
    },
    /// The pod CIDR is too small to hold a gateway and a pod.
    #[error("pod CIDR {0} is smaller than a /30: no room for the gateway and a pod")]
    TooSmall(Ipv4Network),
    /// Writing the file failed.
    #[error("writing CNI config {path}: {source}")]
    Write {
        /// The file (or its temp file).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What the conflist is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSettings {
    /// The whole cluster's pod network: pod traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Network,
    /// netlet-cni's IPAM store (`dataDir`).
    pub ipam_dir: PathBuf,
    /// The directory containerd reads configs from.
    pub conf_dir: PathBuf,
}

/// The conflist for a node whose pods get addresses from `pod_cidr`; the gateway (the
/// bridge's address) is the CIDR's first host.
pub fn render(pod_cidr: Ipv4Network, s: &CniSettings) -> Result<Value, CniConfigError> {
    if pod_cidr.prefix() > 30 {
        return Err(CniConfigError::TooSmall(pod_cidr));
    }
    let subnet =
        Ipv4Network::new(pod_cidr.network(), pod_cidr.prefix()).expect("prefix already checked");
    let gateway = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1);
    Ok(json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "netlet",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "clusterCIDRs": [s.cluster_cidr.to_string()],
                "hairpinMode": true,
                "ipam": {
                    "type": "netlet",
                    "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": s.ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    }))
}

/// Writes `content` to `dir/name` unless the file already holds exactly that; returns whether
/// it wrote. The temp file starts with a dot and ends in `.tmp`, an extension containerd
/// ignores, and is renamed over the target so readers see the old or the new file, never a mix.
pub fn write_if_changed(dir: &Path, name: &str, content: &[u8]) -> Result<bool, CniConfigError> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CniConfigError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let mut f = std::fs::File::create(&tmp).map_err(werr(&tmp))?;
    f.write_all(content).map_err(werr(&tmp))?;
    f.sync_all().map_err(werr(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(true)
}

/// The node's IPv4 pod CIDR, `None` while unassigned.
pub fn pod_cidr(node: &Node) -> Result<Option<Ipv4Network>, CniConfigError> {
    let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) else {
        return Ok(None);
    };
    cidr.parse::<Ipv4Network>()
        .map(Some)
        .map_err(|_| CniConfigError::BadPodCidr {
            node: node.metadata.name.clone().unwrap_or_default(),
            cidr: cidr.into(),
        })
}

/// Brings the conflist in line with `node`; returns whether a usable config is in place.
pub fn sync(node: &Node, s: &CniSettings) -> Result<bool, CniConfigError> {
    let Some(cidr) = pod_cidr(node)? else {
        return Ok(false);
    };
    let mut bytes = serde_json::to_vec_pretty(&render(cidr, s)?).expect("JSON value serializes");
    bytes.push(b'\n');
    if write_if_changed(&s.conf_dir, CONFLIST_NAME, &bytes)? {
        tracing::info!(pod_cidr = %cidr, path = %s.conf_dir.join(CONFLIST_NAME).display(), "wrote CNI config");
    }
    Ok(true)
}

/// Watches the Node `node_name` and keeps the conflist in line with its pod CIDR until
/// `cancel` fires; `ready` says whether a config is in place.
pub async fn run(
    api: Api<Node>,
    node_name: String,
    settings: CniSettings,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut nodes = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            n = nodes.next() => n,
        };
        match next {
            None => return,
            Some(Err(e)) => tracing::warn!(node = %node_name, "watching own Node: {e}"),
            Some(Ok(node)) => match sync(&node, &settings) {
                Ok(ok) => {
                    ready.send_if_modified(|r| std::mem::replace(r, ok) != ok);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    ready.send_if_modified(|r| std::mem::replace(r, false));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn settings(dir: &Path) -> CniSettings {
        CniSettings {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            ipam_dir: "/var/lib/netlet/ipam".into(),
            conf_dir: dir.into(),
        }
    }

    fn node(cidr: Option<&str>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn renders_the_documented_conflist() {
        let v = render("10.244.3.0/24".parse().unwrap(), &settings(Path::new("/x"))).unwrap();
        let expected = json!({
            "cniVersion": "1.0.0",
            "name": "netlet",
            "plugins": [
                {
                    "type": "netlet", "bridge": "netlet0", "isGateway": true, "ipMasq": true,
                    "clusterCIDRs": ["10.244.0.0/16"], "hairpinMode": true,
                    "ipam": {
                        "type": "netlet",
                        "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": "/var/lib/netlet/ipam",
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn netlet_cni_parses_the_rendered_config() {
        // As the runtime hands it over: the plugin entry plus the list's cniVersion and name.
        let v = render("10.244.3.0/24".parse().unwrap(), &settings(Path::new("/x"))).unwrap();
        let mut plugin = v["plugins"][0].clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        plugin["name"] = v["name"].clone();
        let conf = netlet_cni::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.bridge, BRIDGE);
        assert!(conf.is_gateway && conf.ip_masq && conf.hairpin_mode);
        assert_eq!(conf.cluster_cidrs, vec!["10.244.0.0/16".parse().unwrap()]);
        let ipam =
            netlet_cni::ipam::config::IpamConfig::from_json(conf.ipam.as_ref().unwrap()).unwrap();
        assert_eq!(ipam.data_dir, Path::new("/var/lib/netlet/ipam"));
        assert_eq!(ipam.routes.len(), 1);
        assert_eq!(ipam.ranges.len(), 1);
        assert_eq!(ipam.ranges[0].to_string(), "10.244.3.0/24");
        assert_eq!(ipam.ranges[0].0[0].gateway.to_string(), "10.244.3.1");
    }

    #[test]
    fn host_bits_are_dropped_and_tiny_cidrs_refused() {
        let s = settings(Path::new("/x"));
        let v = render("10.1.2.77/24".parse().unwrap(), &s).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.1.2.0/24"
        );
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.1.2.1"
        );
        assert!(matches!(
            render("10.1.2.0/31".parse().unwrap(), &s),
            Err(CniConfigError::TooSmall(_))
        ));
    }

    #[test]
    fn sync_writes_once_and_rewrites_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let s = settings(&conf);
        assert!(!sync(&node(None), &s).unwrap());
        assert!(!conf.join(CONFLIST_NAME).exists());

        assert!(sync(&node(Some("10.244.3.0/24")), &s).unwrap());
        let path = conf.join(CONFLIST_NAME);
        let first: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            first["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());

        // Same CIDR: the file is left alone (same inode: no rename happened).
        let bytes = std::fs::read(&path).unwrap();
        assert!(!write_if_changed(&conf, CONFLIST_NAME, &bytes).unwrap());
        assert!(sync(&node(Some("10.244.3.0/24")), &s).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ino);
        assert_eq!(meta.modified().unwrap(), mtime);

        assert!(sync(&node(Some("10.244.9.0/24")), &s).unwrap());
        let second: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            second["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.9.0/24"
        );
        let names: Vec<_> = std::fs::read_dir(&conf)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![CONFLIST_NAME.to_string()],
            "temp file left behind"
        );
    }

    #[test]
    fn missing_plugins_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(missing_plugins(dir.path()).len(), 2);
        let netlet = dir.path().join("netlet");
        std::fs::write(&netlet, "#!/bin/sh\n").unwrap();
        assert_eq!(missing_plugins(dir.path()).len(), 2, "not executable yet");
        std::fs::set_permissions(&netlet, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            missing_plugins(dir.path()),
            vec![dir.path().join("portmap")]
        );
    }

    #[test]
    fn bad_pod_cidr_is_an_error_naming_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let e = sync(&node(Some("fd00::/64")), &settings(dir.path())).unwrap_err();
        assert!(
            e.to_string().contains("n1") && e.to_string().contains("fd00::/64"),
            "{e}"
        );
    }
}
