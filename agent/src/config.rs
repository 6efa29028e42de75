//! The agent's settings: one struct with the defaults a stock node uses, read from an optional
//! JSON file and overridden by command-line flags, validated once at start-up.
//!
//! Everything downstream takes the validated [`AgentConfig`] (or the few fields it needs) as an
//! argument, so no module reads flags, files or the environment on its own.

use ipnetwork::Ipv4Network;
use netlet_proxy::BackendKind;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// containerd's CRI socket on a stock install.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Where containerd looks for CNI network configs (its `conf_dir` default).
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Where containerd looks for CNI plugin binaries (its `bin_dir` default).
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The agent's own state (IPAM allocations live below it).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netlet";
/// The pod network of the whole cluster, flannel's and kubeadm's usual choice.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Where Prometheus metrics are served: kube-proxy's metrics port, on loopback of the agent's
/// network namespace (each node of `cargo xtask up` has its own).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";

/// The validated settings of one agent process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Kubeconfig to reach the apiserver; `None`: in-cluster config or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// The Node object this agent registers and serves.
    pub node_name: String,
    /// The node's InternalIP; `None`: the first non-loopback IPv4 of the agent's namespace.
    pub node_ip: Option<Ipv4Addr>,
    /// containerd's CRI socket.
    pub containerd_socket: PathBuf,
    /// Where the CNI conflist is written for containerd to pick up.
    pub cni_conf_dir: PathBuf,
    /// Where containerd finds `netlet` and `portmap`; the node is not Ready until both are there.
    pub cni_bin_dir: PathBuf,
    /// The agent's state directory (IPAM data goes to `<state_dir>/ipam`).
    pub state_dir: PathBuf,
    /// The cluster's pod network: traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Network,
    /// Run only the node networking (CNI config, routes) beside another kubelet: no Node
    /// registration, no Lease.
    pub network_only: bool,
    /// Keep routes to other nodes' pod CIDRs; off when another component routes pod traffic.
    pub manage_routes: bool,
    /// Seconds between heartbeats: Lease renewals and node status checks (kubelet: 10).
    pub heartbeat_interval_secs: u64,
    /// Seconds after which the node status is written even when nothing changed (kubelet's
    /// `nodeStatusReportFrequency`, 5 minutes); liveness in between is the Lease's job.
    pub status_report_interval_secs: u64,
    /// Seconds between full route resyncs, repairing routes someone else deleted.
    pub route_resync_secs: u64,
    /// Where container logs go (CRI log files, kubelet's `/var/log/pods` layout).
    pub pod_log_dir: PathBuf,
    /// The cgroup every pod sandbox is placed under (one per agent when several share a host).
    pub cgroup_parent: String,
    /// The service proxy's dataplane, programmed in the agent's network namespace; `none`
    /// turns the proxy off. nftables by default: it programs over netlink (no iptables tools
    /// needed on the node, no text round trips through `iptables-save`), its chains and rules
    /// never depend on which Services exist, so a Service change is a few map element updates
    /// in one transaction instead of chain rewrites (see `netlet_proxy::backend::nftables`).
    pub proxy_backend: BackendKind,
    /// Address of the Prometheus endpoint (proxy and agent metrics); `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// A directory of static pod manifests (kubelet's `--pod-manifest-path`): pods that run
    /// on this node from files, even without the apiserver. `None`: no static pods.
    pub pod_manifest_path: Option<PathBuf>,
    /// Pods whose first start (sandbox, containers) runs at once; the rest queue in watch
    /// order. The CRI calls of a start are mostly CPU in containerd, runc and the CNI plugin,
    /// so more parallel starts than cores only make every pod of a burst Ready later.
    pub parallel_pod_starts: usize,
    /// CA certificates (PEM) that node API clients' certificates must chain to (kubelet's
    /// `--client-ca-file`); `None`: the CA of the kubeconfig, the cluster's.
    pub client_ca_file: Option<PathBuf>,
    /// Also serve the node API on a unix socket in the state dir and name it in the Node, for
    /// an apiserver that shares this host's file system but cannot route to the node (the
    /// HTTPS port is served either way).
    pub node_api_socket: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            node_name: String::new(),
            node_ip: None,
            containerd_socket: DEFAULT_CONTAINERD_SOCKET.into(),
            cni_conf_dir: DEFAULT_CNI_CONF_DIR.into(),
            cni_bin_dir: DEFAULT_CNI_BIN_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            cluster_cidr: DEFAULT_CLUSTER_CIDR.parse().expect("valid default CIDR"),
            network_only: false,
            manage_routes: true,
            heartbeat_interval_secs: 10,
            status_report_interval_secs: 300,
            route_resync_secs: 60,
            pod_log_dir: "/var/log/pods".into(),
            cgroup_parent: "/netlet-pods".into(),
            proxy_backend: BackendKind::Nftables,
            metrics_addr: Some(DEFAULT_METRICS_ADDR.parse().expect("valid default address")),
            pod_manifest_path: None,
            parallel_pod_starts: 4,
            client_ca_file: None,
            node_api_socket: false,
        }
    }
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the config's shape.
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// No node name was given.
    #[error("the node name is empty (set --node-name)")]
    MissingNodeName,
    /// The node name is not a DNS-1123 subdomain, so the apiserver would refuse the Node.
    #[error("node name {0:?} is not a lowercase DNS-1123 subdomain")]
    InvalidNodeName(String),
    /// A directory or socket path is relative, which would depend on the working directory.
    #[error("{field} {path:?} is not an absolute path")]
    RelativePath {
        /// The setting.
        field: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// The cluster CIDR has host bits set, so it names no network.
    #[error("cluster CIDR {0} has host bits set (did you mean {network}/{prefix}?)", network = .0.network(), prefix = .0.prefix())]
    ClusterCidrHostBits(Ipv4Network),
    /// The node IP cannot be a node's address.
    #[error("node IP {0} is loopback, unspecified, broadcast or multicast")]
    UnusableNodeIp(Ipv4Addr),
    /// No pod could ever start.
    #[error("parallelPodStarts must be at least 1")]
    ZeroParallelStarts,
    /// An interval of zero would spin.
    #[error("{0} must be at least 1 second")]
    ZeroInterval(&'static str),
}

impl AgentConfig {
    /// Reads a JSON config file (camelCase keys, every key optional).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Checks everything that can be checked without touching the system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(ConfigError::MissingNodeName);
        }
        if !is_dns1123_subdomain(&self.node_name) {
            return Err(ConfigError::InvalidNodeName(self.node_name.clone()));
        }
        for (field, path) in [
            ("containerd socket", &self.containerd_socket),
            ("CNI conf dir", &self.cni_conf_dir),
            ("CNI bin dir", &self.cni_bin_dir),
            ("state dir", &self.state_dir),
            ("pod log dir", &self.pod_log_dir),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath {
                    field,
                    path: path.clone(),
                });
            }
        }
        for (field, path) in [
            ("pod manifest path", &self.pod_manifest_path),
            ("client CA file", &self.client_ca_file),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err(ConfigError::RelativePath {
                    field,
                    path: path.clone(),
                });
            }
        }
        if self.cluster_cidr.network() != self.cluster_cidr.ip() {
            return Err(ConfigError::ClusterCidrHostBits(self.cluster_cidr));
        }
        if let Some(ip) = self.node_ip {
            if ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(ConfigError::UnusableNodeIp(ip));
            }
        }
        for (name, secs) in [
            ("heartbeatIntervalSecs", self.heartbeat_interval_secs),
            ("statusReportIntervalSecs", self.status_report_interval_secs),
            ("routeResyncSecs", self.route_resync_secs),
        ] {
            if secs == 0 {
                return Err(ConfigError::ZeroInterval(name));
            }
        }
        if self.parallel_pod_starts == 0 {
            return Err(ConfigError::ZeroParallelStarts);
        }
        Ok(())
    }

    /// [`Self::heartbeat_interval_secs`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// [`Self::status_report_interval_secs`] as a duration.
    pub fn status_report_interval(&self) -> Duration {
        Duration::from_secs(self.status_report_interval_secs)
    }

    /// [`Self::route_resync_secs`] as a duration.
    pub fn route_resync(&self) -> Duration {
        Duration::from_secs(self.route_resync_secs)
    }

    /// The IPAM store netlet-cni keeps below the state dir.
    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam")
    }

    /// Where the node API's serving certificate is kept.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// The node API's unix socket (with [`Self::node_api_socket`]), in the state dir so that
    /// agents sharing a host each have their own.
    pub fn node_api_socket(&self) -> PathBuf {
        self.state_dir.join(crate::server::SOCKET_FILE)
    }
}

/// A lowercase RFC 1123 subdomain, as the apiserver requires of Node names.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> AgentConfig {
        AgentConfig {
            node_name: "node-1.example".into(),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_stock_paths_and_validate_once_named() {
        let c = AgentConfig::default();
        assert_eq!(c.cni_conf_dir, Path::new("/etc/cni/net.d"));
        assert_eq!(c.cni_bin_dir, Path::new("/opt/cni/bin"));
        assert_eq!(c.state_dir, Path::new("/var/lib/netlet"));
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(10));
        assert!(c.manage_routes && !c.network_only);
        assert_eq!(c.proxy_backend, BackendKind::Nftables);
        assert_eq!(c.metrics_addr, Some("127.0.0.1:10249".parse().unwrap()));
        assert!(matches!(c.validate(), Err(ConfigError::MissingNodeName)));
        valid().validate().unwrap();
        assert_eq!(valid().ipam_dir(), Path::new("/var/lib/netlet/ipam"));
    }

    #[test]
    fn json_keys_are_camel_case_and_unknown_keys_are_refused() {
        let c: AgentConfig = serde_json::from_str(
            r#"{"nodeName": "n1", "nodeIp": "192.0.2.7", "clusterCidr": "10.9.0.0/16",
                "networkOnly": true, "proxyBackend": "iptables", "metricsAddr": null,
                "podManifestPath": "/etc/kubernetes/manifests"}"#,
        )
        .unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.node_ip, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(c.cluster_cidr.to_string(), "10.9.0.0/16");
        assert!(c.network_only);
        assert_eq!(c.proxy_backend, BackendKind::Iptables);
        assert_eq!(c.metrics_addr, None);
        assert_eq!(
            c.pod_manifest_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert!(serde_json::from_str::<AgentConfig>(r#"{"nodename": "n1"}"#).is_err());
    }

    #[test]
    fn from_file_names_the_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.json");
        let err = AgentConfig::from_file(&p).unwrap_err();
        assert!(err.to_string().contains("agent.json"), "{err}");
        std::fs::write(&p, "{not json").unwrap();
        let err = AgentConfig::from_file(&p).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        std::fs::write(&p, r#"{"nodeName": "n2"}"#).unwrap();
        assert_eq!(AgentConfig::from_file(&p).unwrap().node_name, "n2");
    }

    #[test]
    fn every_proxy_backend_validates() {
        for b in [
            BackendKind::Iptables,
            BackendKind::Nftables,
            BackendKind::Ebpf,
            BackendKind::None,
        ] {
            let c = AgentConfig {
                proxy_backend: b,
                ..valid()
            };
            c.validate().unwrap_or_else(|e| panic!("{b}: {e}"));
        }
        let c: AgentConfig =
            serde_json::from_str(r#"{"nodeName": "n1", "proxyBackend": "ebpf"}"#).unwrap();
        assert_eq!(c.proxy_backend, BackendKind::Ebpf);
    }

    #[test]
    fn validation_rejects_bad_values() {
        let check = |f: fn(&mut AgentConfig)| {
            let mut c = valid();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            check(|c| c.node_name = "Node_1".into()),
            ConfigError::InvalidNodeName(_)
        ));
        assert!(matches!(
            check(|c| c.node_name = "-a".into()),
            ConfigError::InvalidNodeName(_)
        ));
        assert!(matches!(
            check(|c| c.state_dir = "var/lib".into()),
            ConfigError::RelativePath {
                field: "state dir",
                ..
            }
        ));
        let e = check(|c| c.cluster_cidr = "10.244.1.0/16".parse().unwrap());
        assert!(e.to_string().contains("10.244.0.0/16"), "{e}");
        assert!(matches!(
            check(|c| c.node_ip = Some(Ipv4Addr::LOCALHOST)),
            ConfigError::UnusableNodeIp(_)
        ));
        assert!(matches!(
            check(|c| c.pod_manifest_path = Some("manifests".into())),
            ConfigError::RelativePath {
                field: "pod manifest path",
                ..
            }
        ));
        assert!(matches!(
            check(|c| c.heartbeat_interval_secs = 0),
            ConfigError::ZeroInterval("heartbeatIntervalSecs")
        ));
        assert!(matches!(
            check(|c| c.parallel_pod_starts = 0),
            ConfigError::ZeroParallelStarts
        ));
    }
}
